// The host emulator's machinery (what and how: tests/emu/cuda_emu.h): fibers and their scheduler,
// block barriers and warp collectives, the emulated PTX, and kernel launch. Streams and the CUDA
// runtime API, which run the launched grids, are in cuda_emu_runtime.cpp.
#include "cuda_emu.h"
#include "cuda_emu_internal.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <algorithm>
#include <cstdlib>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

// Static __shared__ variables (the section of cuda_emu.h's __shared__), bounds from the linker.
extern "C" char __start_kiln_emu_shared[] __attribute__((weak));
extern "C" char __stop_kiln_emu_shared[] __attribute__((weak));

namespace kiln::emu {
namespace {

// ---- Fibers ---------------------------------------------------------------------------------
// A saved context is a stack pointer; kiln_emu_switch pushes the callee-saved registers and the
// SSE/x87 control words, stores rsp, loads the other rsp and pops the same. (ucontext elsewhere:
// correct, but every switch is a system call.)
#if defined(__x86_64__)
extern "C" void kiln_emu_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .p2align 4
  .globl kiln_emu_switch
  .type kiln_emu_switch, @function
kiln_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size kiln_emu_switch, .-kiln_emu_switch
)");

struct Context {
  void* sp = nullptr;
};
void make_context(Context& c, char* stack, std::size_t size, void (*entry)()) {
  auto* top = reinterpret_cast<std::uintptr_t*>(reinterpret_cast<std::uintptr_t>(stack + size) & ~std::uintptr_t{15});
  top[-1] = 0;                                          // entry's return address: never used
  top[-2] = reinterpret_cast<std::uintptr_t>(entry);    // where the first switch returns to
  for (int i = 3; i <= 8; ++i) top[-i] = 0;             // rbp rbx r12 r13 r14 r15
  top[-9] = 0x1f80 | (std::uintptr_t{0x037f} << 32);    // default MXCSR and x87 control word
  c.sp = top - 9;
}
void switch_context(Context& from, const Context& to) { kiln_emu_switch(&from.sp, to.sp); }
#else
struct Context {
  ucontext_t uc;
};
void make_context(Context& c, char* stack, std::size_t size, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
void switch_context(Context& from, const Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

// Stacks of 256 KiB above a guard page, reused: a thread that finishes gives its stack back.
constexpr std::size_t kStackBytes = std::size_t{256} << 10;
std::vector<char*> free_stacks;
char* take_stack() {
  if (!free_stacks.empty()) {
    char* s = free_stacks.back();
    free_stacks.pop_back();
    return s;
  }
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  void* p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (p == MAP_FAILED) std::abort();
  mprotect(p, page, PROT_NONE);
  return static_cast<char*>(p) + page;
}

// ---- Threads, warps, blocks ---------------------------------------------------------------------
struct Copy {
  void* dst;
  const void* src;
  int bytes;
};

struct Thread {
  Context context;
  char* stack = nullptr;
  uint3 index{};
  int linear = 0;
  enum class Phase { kFresh, kRunning, kWaiting, kDone } phase = Phase::kFresh;
  const std::uint64_t* wait_generation = nullptr;  // waiting until it moves past wait_value
  std::uint64_t wait_value = 0;
  const char* wait_op = nullptr;
  Where wait_where;
  std::vector<Copy> open;                 // cp.async not yet committed
  std::deque<std::vector<Copy>> groups;   // committed, oldest first
};

struct Barrier {
  int arrived = 0;
  std::uint64_t generation = 0;
  const char* op = nullptr;
  Where where;
};

struct Warp {
  Barrier barrier;
  Lane lanes[32];
};

struct LaunchState {
  std::mutex launch_mutex;  // one launch at a time
  LaunchConfig config{};
  void (*body)(const void*) = nullptr;
  const void* ctx = nullptr;
  uint3 block_index{};
  std::vector<Thread> threads;
  std::vector<Warp> warps;
  Barrier block_barrier;
  unsigned char* shared = nullptr;  // dynamic shared memory of the running block
  std::size_t shared_capacity = 0;
  Thread* current = nullptr;
  Context scheduler;
  bool reverse = false;  // this block scans its threads from the last
  int rescan_from = 0;   // scan position to go back to after the running thread
  std::map<const void*, int> max_dynamic_shared;
};
LaunchState& state() {
  static auto* s = new LaunchState;  // outlives static destructors, whose cudaFree runs queued grids
  return *s;
}

// The same string; literals from one call site share an address, so that is compared first.
bool same_text(const char* a, const char* b) { return a == b || std::strcmp(a, b) == 0; }
bool same_site(const Where& a, const Where& b) {
  return a.line() == b.line() && a.column() == b.column() && same_text(a.file_name(), b.file_name());
}
std::string site(const Where& w) {
  std::string file = w.file_name();
  const auto slash = file.rfind('/');
  return (slash == std::string::npos ? file : file.substr(slash + 1)) + ":" + std::to_string(w.line());
}

void thread_entry() {
  LaunchState& s = state();
  s.body(s.ctx);
  s.current->phase = Thread::Phase::kDone;
  switch_context(s.current->context, s.scheduler);
  std::abort();  // a finished thread is never resumed
}

void resume(Thread& t) {
  LaunchState& s = state();
  if (t.phase == Thread::Phase::kFresh) {
    t.stack = take_stack();
    make_context(t.context, t.stack, kStackBytes, thread_entry);
  }
  t.phase = Thread::Phase::kRunning;
  s.current = &t;
  threadIdx = t.index;
  switch_context(s.scheduler, t.context);
  s.current = nullptr;
  if (t.phase == Thread::Phase::kDone) {
    free_stacks.push_back(t.stack);
    t.stack = nullptr;
  }
}

// Suspends the running thread until b's generation moves on.
void wait_at(Barrier& b, const char* op, const Where& where) {
  LaunchState& s = state();
  Thread& t = *s.current;
  t.phase = Thread::Phase::kWaiting;
  t.wait_generation = &b.generation;
  t.wait_value = b.generation;
  t.wait_op = op;
  t.wait_where = where;
  switch_context(t.context, s.scheduler);
}

// Arrives at b (n threads); false when this thread must wait. Checks that every thread comes
// with the same op from the same site.
bool arrive(Barrier& b, int n, const char* op, const Where& where) {
  if (b.arrived == 0) {
    b.op = op;
    b.where = where;
  } else if (!same_text(b.op, op) || !same_site(b.where, where)) {
    fail(("threads meet at different barriers or collectives: " + std::string(b.op) + " at " + site(b.where) +
          " and " + op + " at " + site(where)).c_str(), where);
  }
  if (++b.arrived < n) return false;
  b.arrived = 0;
  ++b.generation;
  return true;
}

[[noreturn]] void deadlock() {
  LaunchState& s = state();
  std::map<std::string, int> waiting;
  int done = 0;
  for (const Thread& t : s.threads) {
    if (t.phase == Thread::Phase::kDone) ++done;
    else waiting[std::string(t.wait_op) + " at " + site(t.wait_where)]++;
  }
  std::string what = "deadlock: no thread can go on (";
  for (const auto& [where, n] : waiting) what += std::to_string(n) + " wait at " + where + ", ";
  what += std::to_string(done) + " exited)";
  s.current = nullptr;
  fail(what.c_str(), Where::current());
}

// The block's threads are scanned in threadIdx order (reversed in odd blocks); after a barrier or
// warp collective lets threads go on, the scan goes back to the first of them. So the first
// warp (the last, in odd blocks) runs as far ahead of the others as the barriers allow, and a
// missing barrier shows whichever way round the race goes.
void run_block() {
  LaunchState& s = state();
  const dim3 b = s.config.block;
  const int n = static_cast<int>(b.x * b.y * b.z);
  s.threads.resize(n);
  s.warps.resize((n + 31) / 32);
  for (Warp& w : s.warps) w.barrier = Barrier{};
  s.block_barrier = Barrier{};
  for (int i = 0; i < n; ++i) {
    Thread& t = s.threads[i];
    t.phase = Thread::Phase::kFresh;
    t.linear = i;
    t.index = {i % b.x, (i / b.x) % b.y, i / (b.x * b.y)};
    t.open.clear();
    t.groups.clear();
  }
  std::memset(s.shared, 0xff, s.config.smem);
  if (__start_kiln_emu_shared != nullptr)
    std::memset(__start_kiln_emu_shared, 0xff, static_cast<std::size_t>(__stop_kiln_emu_shared - __start_kiln_emu_shared));
  s.reverse = (blockIdx.x + blockIdx.y + blockIdx.z) % 2 == 1;
  int live = n;
  bool progress = false;
  for (int pos = 0;;) {
    if (pos == n) {
      if (live == 0) return;
      if (!progress) deadlock();
      pos = 0;
      progress = false;
    }
    Thread& t = s.threads[s.reverse ? n - 1 - pos : pos];
    s.rescan_from = n;
    if (t.phase != Thread::Phase::kDone &&
        !(t.phase == Thread::Phase::kWaiting && *t.wait_generation == t.wait_value)) {
      resume(t);
      progress = true;
      if (t.phase == Thread::Phase::kDone) --live;
    }
    pos = std::min(pos + 1, s.rescan_from);
  }
}

// Threads [first, first + count) may go on: the scan goes back to them.
void released(int first, int count) {
  LaunchState& s = state();
  const int n = static_cast<int>(s.threads.size());
  const int pos = s.reverse ? n - std::min(first + count, n) : first;
  s.rescan_from = std::min(s.rescan_from, pos);
}

cudaError_t check_config(const LaunchConfig& c) {
  const dim3 g = c.grid, b = c.block;
  if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535) return cudaErrorInvalidConfiguration;
  if (b.x == 0 || b.y == 0 || b.z == 0 || b.x > 1024 || b.y > 1024 || b.z > 64 || b.x * b.y * b.z > 1024)
    return cudaErrorInvalidConfiguration;
  if (c.smem > 48 * 1024) {
    const auto it = state().max_dynamic_shared.find(c.kernel);
    if (it == state().max_dynamic_shared.end() || static_cast<std::size_t>(it->second) < c.smem)
      return cudaErrorInvalidValue;  // as CUDA: more than 48 KiB needs cudaFuncSetAttribute
  }
  return cudaSuccess;
}

// A crash inside a kernel names it.
void on_crash(int sig) {
  const LaunchState& s = state();
  if (s.current != nullptr) {
    char line[512];
    const int len = std::snprintf(line, sizeof line,
                                  "kiln CUDA emulator: signal %d in kernel %s, block (%u,%u,%u), thread (%u,%u,%u): an "
                                  "out-of-bounds or misaligned access?\n",
                                  sig, s.config.name, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y,
                                  threadIdx.z);
    if (len > 0) (void)!write(2, line, static_cast<std::size_t>(len));
  }
  signal(sig, SIG_DFL);
  raise(sig);
}
void install_crash_handler() {
  static bool installed = [] {
    static char alt[1 << 16];
    stack_t ss{};
    ss.ss_sp = alt;
    ss.ss_size = sizeof alt;
    sigaltstack(&ss, nullptr);
    struct sigaction sa {};
    sa.sa_handler = on_crash;
    sa.sa_flags = SA_ONSTACK;
    sigaction(SIGSEGV, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);
    return true;
  }();
  (void)installed;
}

bool in_shared(const void* p, std::size_t bytes) {
  const LaunchState& s = state();
  const auto* c = static_cast<const char*>(p);
  const auto* dyn = reinterpret_cast<const char*>(s.shared);
  return (c >= dyn && c + bytes <= dyn + s.config.smem) ||
         (__start_kiln_emu_shared != nullptr && c >= __start_kiln_emu_shared && c + bytes <= __stop_kiln_emu_shared);
}

// Lanes 8 m .. 8 m + 7 address the rows of matrix m; lane l receives, from each matrix, elements
// (l / 4, 2 (l % 4) + {0, 1}), or with .trans (2 (l % 4) + {0, 1}, l / 4).
void ldmatrix_fragments(Lane* lanes, bool trans) {
  auto element = [&](int matrix, int i, int j) {
    std::uint16_t x;
    std::memcpy(&x, static_cast<const char*>(lanes[8 * matrix + i].address) + 2 * j, 2);
    return static_cast<std::uint32_t>(x);
  };
  for (int l = 0; l < 32; ++l)
    for (int m = 0; m < 4; ++m) {
      const int g = l / 4, q = 2 * (l % 4);
      lanes[l].r[m] = trans ? element(m, q, g) | element(m, q + 1, g) << 16 : element(m, g, q) | element(m, g, q + 1) << 16;
    }
}

}  // namespace

// ---- What kernels call -------------------------------------------------------------------------
void fail(const char* what, const Where& where) {
  const LaunchState& s = state();
  if (s.current != nullptr)
    std::fprintf(stderr, "kiln CUDA emulator: %s\n  in kernel %s, block (%u,%u,%u), thread (%u,%u,%u), at %s\n", what,
                 s.config.name, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z,
                 site(where).c_str());
  else
    std::fprintf(stderr, "kiln CUDA emulator: %s\n  in kernel %s, block (%u,%u,%u)\n", what, s.config.name,
                 blockIdx.x, blockIdx.y, blockIdx.z);
  std::abort();
}

int lane_id() { return state().current->linear % 32; }
Lane& lane() {
  const Thread& t = *state().current;
  return state().warps[t.linear / 32].lanes[t.linear % 32];
}

void warp_collective(const char* op, const Where& where, void (*compute)(Lane* lanes)) {
  LaunchState& s = state();
  const int linear = s.current->linear, n = static_cast<int>(s.threads.size());
  if (linear - linear % 32 + 32 > n) fail("a warp collective in a partial warp (threads not a multiple of 32)", where);
  Warp& w = s.warps[linear / 32];
  if (arrive(w.barrier, 32, op, where)) {
    compute(w.lanes);
    released(linear - linear % 32, 32);
  } else {
    wait_at(w.barrier, op, where);
  }
}

void sync_block(const Where& where) {
  LaunchState& s = state();
  const int n = static_cast<int>(s.threads.size());
  if (arrive(s.block_barrier, n, "__syncthreads", where)) released(0, n);
  else wait_at(s.block_barrier, "__syncthreads", where);
}

void* dynamic_shared() { return state().shared; }

void ldmatrix_x4(std::uint32_t (&r)[4], const void* row, bool trans, const Where& where) {
  if (!in_shared(row, 16)) fail("ldmatrix: row address outside shared memory", where);
  if (reinterpret_cast<std::uintptr_t>(row) % 16 != 0) fail("ldmatrix: row address not 16-byte aligned", where);
  Lane& me = lane();
  me.address = row;
  if (trans) warp_collective("ldmatrix.x4.trans", where, [](Lane* l) { ldmatrix_fragments(l, true); });
  else warp_collective("ldmatrix.x4", where, [](Lane* l) { ldmatrix_fragments(l, false); });
  std::memcpy(r, me.r, sizeof r);
}

void mma_bf16_16816(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1,
                    const Where& where) {
  Lane& me = lane();
  std::memcpy(me.a, a, sizeof me.a);
  me.b[0] = b0;
  me.b[1] = b1;
  std::memcpy(me.c, d, sizeof me.c);
  warp_collective("mma.m16n8k16", where, [](Lane* lanes) {
    // Fragments (lane = 4 g + q): a0 (g, 2q..), a1 (g+8, 2q..), a2 (g, 2q+8..), a3 (g+8, 2q+8..);
    // b0 (k 2q.., n g), b1 (k 2q+8.., n g); c0 c1 (g, 2q..), c2 c3 (g+8, 2q..).
    auto half = [](std::uint32_t reg, int h) { return __bfloat162float({static_cast<unsigned short>(reg >> (16 * h))}); };
    float A[16][16], B[16][8], C[16][8];
    for (int l = 0; l < 32; ++l) {
      const int g = l / 4, q = 2 * (l % 4);
      for (int h = 0; h < 2; ++h) {
        A[g][q + h] = half(lanes[l].a[0], h);
        A[g + 8][q + h] = half(lanes[l].a[1], h);
        A[g][q + 8 + h] = half(lanes[l].a[2], h);
        A[g + 8][q + 8 + h] = half(lanes[l].a[3], h);
        B[q + h][g] = half(lanes[l].b[0], h);
        B[q + 8 + h][g] = half(lanes[l].b[1], h);
        C[g][q + h] = lanes[l].c[h];
        C[g + 8][q + h] = lanes[l].c[2 + h];
      }
    }
    for (int l = 0; l < 32; ++l) {
      const int g = l / 4, q = 2 * (l % 4);
      for (int e = 0; e < 4; ++e) {
        const int row = g + 8 * (e / 2), col = q + e % 2;
        float acc = C[row][col];
        for (int k = 0; k < 16; ++k) acc = rounded(acc + A[row][k] * B[k][col]);  // products are exact
        lanes[l].c[e] = acc;
      }
    }
  });
  std::memcpy(d, me.c, sizeof me.c);
}

void cp_async_16(void* dst, const void* src, int src_bytes) {
  const Where here = Where::current();
  if (!in_shared(dst, 16)) fail("cp.async: destination outside shared memory", here);
  if (reinterpret_cast<std::uintptr_t>(dst) % 16 != 0 || reinterpret_cast<std::uintptr_t>(src) % 16 != 0)
    fail("cp.async: addresses not 16-byte aligned", here);
  if (src_bytes < 0 || src_bytes > 16) fail("cp.async: src_bytes outside [0, 16]", here);
  std::memset(dst, 0xff, 16);  // undefined from now until the wait: a read too early, or a write
  state().current->open.push_back({dst, src, src_bytes});  // while others still read, shows
}
void cp_async_commit() {
  Thread& t = *state().current;
  t.groups.push_back(std::move(t.open));
  t.open.clear();
}
void cp_async_wait(int pending) {
  Thread& t = *state().current;
  while (static_cast<int>(t.groups.size()) > pending) {
    for (const Copy& c : t.groups.front()) {
      std::memcpy(c.dst, c.src, static_cast<std::size_t>(c.bytes));
      std::memset(static_cast<char*>(c.dst) + c.bytes, 0, static_cast<std::size_t>(16 - c.bytes));
    }
    t.groups.pop_front();
  }
}

void set_max_dynamic_shared(const void* kernel, int bytes) { state().max_dynamic_shared[kernel] = bytes; }

// Runs every block of a grid whose configuration launch() checked.
void run_grid(const LaunchConfig& config, void (*body)(const void*), const void* ctx) {
  LaunchState& s = state();
  std::lock_guard lock(s.launch_mutex);
  install_crash_handler();
  s.config = config;
  s.body = body;
  s.ctx = ctx;
  if (config.smem > s.shared_capacity) {
    ::operator delete(s.shared, std::align_val_t{128});
    s.shared = static_cast<unsigned char*>(::operator new(config.smem, std::align_val_t{128}));
    s.shared_capacity = config.smem;
  }
  gridDim = config.grid;
  blockDim = config.block;
  for (unsigned z = 0; z < config.grid.z; ++z)
    for (unsigned y = 0; y < config.grid.y; ++y)
      for (unsigned x = 0; x < config.grid.x; ++x) {
        blockIdx = {x, y, z};
        run_block();
      }
}

void launch(const LaunchConfig& config, cudaStream_t stream, void (*body)(const void*), std::shared_ptr<const void> ctx) {
  const cudaError_t status = check_config(config);
  if (status != cudaSuccess) {
    set_last_error(status);
    return;
  }
  enqueue(stream, [config, body, ctx = std::move(ctx)] { run_grid(config, body, ctx.get()); });
}

}  // namespace kiln::emu
