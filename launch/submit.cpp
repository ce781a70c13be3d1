// kiln submit (submit.h).
#include "launch/submit.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "core/checkpoint/atomic_file.h"
#include "core/config.h"
#include "kernels/error.h"

namespace kiln::cli {
namespace {

namespace fs = std::filesystem;

// One shell word: single-quoted unless it is plainly safe.
std::string quote(const std::string& word) {
  if (!word.empty() && word.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./=:@,+%") ==
                           std::string::npos)
    return word;
  std::string out = "'";
  for (char c : word) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string quoted(const std::vector<std::string>& words) {
  std::string out;
  for (const std::string& w : words) {
    out.push_back(' ');
    out.append(quote(w));
  }
  return out;
}

// --array FILE: one point per non-empty line that is not a comment, its overrides separated by
// spaces; a point without train.run_dir= gets base_run_dir/point_<i>.
std::vector<std::vector<std::string>> read_points(const std::string& path, const std::string& base_run_dir,
                                                  std::vector<int>& lines) {
  KILN_CHECK(!fs::is_directory(path), "--array ", path, " is a folder; it must be a file of override lines, one "
             "point per line");
  std::ifstream in(path);
  KILN_CHECK(in.good(), "--array ", path, ": cannot read it; it lists one point per line (its overrides, "
             "section.key=value separated by spaces)");
  std::vector<std::vector<std::string>> points;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos || line[line.find_first_not_of(" \t")] == '#') continue;
    std::istringstream words(line);
    std::vector<std::string> point;
    bool has_run_dir = false;
    if (!line.empty() && line.back() == '\r') line.pop_back();  // CRLF files
    for (std::string w; words >> w;) {
      if (w.back() == '\r') w.pop_back();
      KILN_CHECK(w.find('=') != std::string::npos && w.find('.') < w.find('='), path, ":", number, ": '", w,
                 "' is not an override (section.key=value; values cannot hold spaces or quotes here)");
      has_run_dir = has_run_dir || w.rfind("train.run_dir=", 0) == 0;
      point.push_back(w);
    }
    if (!has_run_dir) point.push_back("train.run_dir=" + base_run_dir + "/point_" + std::to_string(points.size()));
    points.push_back(point);
    lines.push_back(number);
  }
  KILN_CHECK(!points.empty(), "--array ", path, " lists no point; write one line of overrides per point");
  return points;
}

}  // namespace

std::string sbatch_script(const SubmitArgs& a) {
  KILN_CHECK(a.nodes >= 1, "--nodes must be at least 1");
  KILN_CHECK(a.gpus_per_node >= 0 && a.ranks_per_node >= 0 && a.cpus_per_task >= 0,
             "--gpus-per-node, --ranks-per-node and --cpus-per-task must not be negative");
  KILN_CHECK(a.gpus_per_node == 0 || a.ranks_per_node == 0 || a.ranks_per_node == a.gpus_per_node,
             "--ranks-per-node ", a.ranks_per_node, " with --gpus-per-node ", a.gpus_per_node,
             ": kiln runs one rank per GPU; leave --ranks-per-node out");
  KILN_CHECK(a.signal_seconds >= 1, "--signal-seconds must be at least 1 (the warning before a time limit)");
  // A newline or another control character would end the #SBATCH block or the command early.
  auto check_text = [](const std::string& what, const std::string& text) {
    for (unsigned char c : text)
      KILN_CHECK(c >= 0x20 && c != 0x7f, what, " '", text, "' holds a control character (a newline?); the job "
                 "script cannot carry it: remove it");
  };
  for (const std::string& o : a.overrides) check_text("the override", o);
  for (const std::string& o : a.sbatch_args) check_text("--sbatch-arg", o);
  for (const std::string* t : {&a.config, &a.time, &a.partition, &a.account, &a.job_name, &a.kiln})
    check_text("the argument", *t);
  // The config is read now, so a bad one fails here and not in the queue hours later; with
  // --cpus-per-task, as the ranks will read it (train.threads).
  std::vector<std::string> checked = a.overrides;
  if (a.cpus_per_task > 0) checked.push_back("train.threads=" + std::to_string(a.cpus_per_task));
  const ExperimentConfig config = load_config(a.config, checked);
  const bool gpu = config.train.device == "cuda";
  KILN_CHECK(!gpu || a.gpus_per_node > 0, a.config, ": train.device=cuda; say how many GPUs each node has "
             "(--gpus-per-node G: one rank each)");
  KILN_CHECK(gpu || a.gpus_per_node == 0, "--gpus-per-node ", a.gpus_per_node, " with train.device=cpu: set "
             "train.device=cuda to train on the GPUs, or leave --gpus-per-node out for a CPU job");
  const int ranks_per_node = gpu ? a.gpus_per_node : std::max(1, a.ranks_per_node);
  const int world = a.nodes * ranks_per_node;
  KILN_CHECK(world % config.parallel.tp == 0, "the job's ", world, " ranks (", a.nodes, " nodes x ", ranks_per_node,
             ") are not a multiple of parallel.tp=", config.parallel.tp);
  const fs::path run_dir = fs::absolute(config.train.run_dir).lexically_normal();
  std::vector<std::vector<std::string>> points;
  if (!a.array.empty()) {
    std::vector<int> lines;
    points = read_points(a.array, run_dir.string(), lines);
    std::map<std::string, std::size_t> run_dirs;  // each point's own folder
    for (std::size_t i = 0; i < points.size(); ++i) {
      std::vector<std::string> all = checked;
      all.insert(all.end(), points[i].begin(), points[i].end());
      ExperimentConfig point;
      try {
        point = load_config(a.config, all);
      } catch (const Error& e) {
        throw Error(message(a.array, ":", lines[i], " (point ", i, "): ", e.what()));
      }
      const std::string dir = fs::absolute(point.train.run_dir).lexically_normal().string();
      const auto [it, fresh] = run_dirs.emplace(dir, i);
      KILN_CHECK(fresh, a.array, ":", lines[i], ": points ", it->second, " (line ", lines[it->second], ") and ", i,
                 " both train in ", dir,
                 "; each point needs its own train.run_dir (a point without one gets run_dir/point_<i>)");
    }
  }
  std::string kiln = a.kiln;
  if (kiln.empty()) kiln = fs::read_symlink("/proc/self/exe").string();
  const std::string name = !a.job_name.empty() ? a.job_name : "kiln-" + run_dir.filename().string();
  const std::string log = points.empty() ? "slurm-%j" : "slurm-%A_%a";

  std::ostringstream s;
  s << "#!/bin/bash\n";
  s << "# Written by kiln submit (docs/parallel.md, \"On a cluster\"). The run continues from its newest\n";
  s << "# checkpoint whenever the job starts (train.resume=auto): after a requeue, a preemption or a\n";
  s << "# time limit, each announced by SIGUSR1 " << a.signal_seconds << " s ahead, on which kiln checkpoints,\n";
  s << "# requeues the job (scontrol requeue) and exits 75.\n";
  s << "#SBATCH --job-name=" << quote(name) << "\n";
  s << "#SBATCH --nodes=" << a.nodes << "\n";
  s << "#SBATCH --ntasks-per-node=" << ranks_per_node << "\n";
  if (gpu) s << "#SBATCH --gpus-per-task=1\n";
  if (a.cpus_per_task > 0) s << "#SBATCH --cpus-per-task=" << a.cpus_per_task << "\n";
  if (!a.time.empty()) s << "#SBATCH --time=" << quote(a.time) << "\n";
  if (!a.partition.empty()) s << "#SBATCH --partition=" << quote(a.partition) << "\n";
  if (!a.account.empty()) s << "#SBATCH --account=" << quote(a.account) << "\n";
  s << "#SBATCH --signal=USR1@" << a.signal_seconds << "\n";
  s << "#SBATCH --requeue\n";
  s << "#SBATCH --open-mode=append\n";
  s << "#SBATCH --chdir=" << quote(fs::current_path().string()) << "\n";
  s << "#SBATCH --output=" << quote((run_dir / (log + ".out")).string()) << "\n";
  s << "#SBATCH --error=" << quote((run_dir / (log + ".err")).string()) << "\n";
  if (!points.empty()) s << "#SBATCH --array=0-" << points.size() - 1 << "\n";
  for (const std::string& extra : a.sbatch_args) s << "#SBATCH " << extra << "\n";
  s << "\n";
  s << "# One OpenMP team per rank, on the rank's own CPUs.\n";
  s << "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}\n";
  s << "export OMP_PROC_BIND=close OMP_PLACES=cores\n";
  if (gpu) {
    s << "# NCCL: warnings only; on several nodes set NCCL_SOCKET_IFNAME (or NCCL_IB_HCA) for the fabric.\n";
    s << "export NCCL_DEBUG=${NCCL_DEBUG:-WARN}\n";
  }
  std::vector<std::string> train = {"train", fs::absolute(a.config).lexically_normal().string()};
  train.insert(train.end(), a.overrides.begin(), a.overrides.end());
  if (!points.empty()) {
    s << "case \"$SLURM_ARRAY_TASK_ID\" in\n";
    for (std::size_t i = 0; i < points.size(); ++i) s << "  " << i << ") point=(" << quoted(points[i]).substr(1) << ") ;;\n";
    s << "  *) echo \"kiln submit: this job array has no point $SLURM_ARRAY_TASK_ID\" >&2; exit 1 ;;\n";
    s << "esac\n";
  }
  s << "echo \"kiln: job $SLURM_JOB_ID on $SLURM_JOB_NUM_NODES node(s), $SLURM_NTASKS rank(s), restart "
       "${SLURM_RESTART_COUNT:-0}\"\n";
  s << "srun --mpi=pmix --kill-on-bad-exit=1 " << quote(kiln) << quoted(train);
  if (!points.empty()) s << " \"${point[@]}\"";
  if (a.cpus_per_task > 0) s << " train.threads=$SLURM_CPUS_PER_TASK";
  s << " train.resume=auto\n";
  s << "exit $?\n";
  return s.str();
}

int submit(const SubmitArgs& args) {
  const std::string script = sbatch_script(args);
  if (args.dry_run) {
    std::fputs(script.c_str(), stdout);
    return 0;
  }
  const ExperimentConfig config = load_config(args.config, args.overrides);
  const fs::path run_dir = fs::absolute(config.train.run_dir);
  std::error_code ec;
  fs::create_directories(run_dir, ec);  // Slurm writes the job's output files there
  KILN_CHECK(!ec, "cannot create train.run_dir=", run_dir.string(), ": ", ec.message());
  const std::string path = (run_dir / "job.sbatch").string();
  write_file_atomic(path, script);
  const std::string command = "sbatch " + quote(path) + " 2>&1";
  std::FILE* pipe = ::popen(command.c_str(), "r");
  KILN_CHECK(pipe != nullptr, "cannot run sbatch: ", std::strerror(errno));
  std::string output;
  char buffer[512];
  for (std::size_t n; (n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0;) output.append(buffer, n);
  const int status = ::pclose(pipe);
  KILN_CHECK(status == 0, "sbatch ", path, " failed: ", output.empty() ? "(no output)" : output,
             status == 127 * 256 ? " (is Slurm installed here? sbatch was not found)" : "");
  std::printf("%s", output.c_str());
  std::printf("kiln: wrote %s; the job's output goes to %s/slurm-*.out\n", path.c_str(), run_dir.string().c_str());
  return 0;
}

}  // namespace kiln::cli
