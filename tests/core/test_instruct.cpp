// Instruction data: each record format renders to the expected text, the loss mask covers only
// the response and its end-of-text, k-shot exemplars are seeded and never the example itself,
// errors name file:line / template / variable; packing restarts positions per example and a
// packed batch gives every example exactly the loss it has when run alone.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "core/data/instruct.h"
#include "core/data/jsonl.h"
#include "error_of.h"
#include "core/data/packing.h"
#include "core/data/tokenizer.h"
#include "kernels/error.h"
#include "core/model/gpt.h"

namespace {

const std::string kDataDir = std::string(KILN_SOURCE_DIR) + "/tests/data/instruct/";

std::string decode(const kiln::Tokenizer& tok, const std::vector<std::uint32_t>& ids) { return tok.decode(ids); }

// The tokens under the loss mask, decoded.
std::string masked_text(const kiln::Tokenizer& tok, const kiln::Example& ex) {
  std::vector<std::uint32_t> ids;
  for (std::size_t i = 0; i < ex.size(); ++i)
    if (ex.mask[i]) ids.push_back(ex.ids[i]);
  return tok.decode(ids);
}

std::string write_temp(const std::string& name, const std::string& text) {
  const auto path = std::filesystem::temp_directory_path() / ("kiln_test_instruct_" + name);
  std::ofstream(path) << text;
  return path.string();
}

using kiln::testing::error_of;

kiln::InstructRenderer renderer(const kiln::Tokenizer& tok, kiln::TemplateSet set, int k_shot = 0,
                                std::uint64_t seed = 1) {
  return kiln::InstructRenderer(tok, std::move(set), kiln::RenderOptions{seed, 0, k_shot});
}

}  // namespace

TEST(Instruct, InstructionRecordsRenderThroughTheBuiltinTemplates) {
  auto tok = kiln::make_tokenizer("byte");
  const auto records = kiln::read_instruct_file(kDataDir + "alpaca.jsonl", {});
  ASSERT_EQ(records.size(), 4u);
  const auto r = renderer(*tok, kiln::TemplateSet::builtin());
  const kiln::Example with_input = r.render(records, 0);
  EXPECT_EQ(decode(*tok, with_input.ids),
            "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n5<|endoftext|>");
  EXPECT_EQ(masked_text(*tok, with_input), "5<|endoftext|>");
  EXPECT_EQ(with_input.ids.back(), tok->eot());
  EXPECT_EQ(with_input.mask.back(), 1);  // end-of-text is a target
  // No input, or an empty one: the template without an input section.
  EXPECT_EQ(decode(*tok, r.render(records, 1).ids),
            "### Instruction:\nName a colour.\n\n### Response:\nBlue<|endoftext|>");
  EXPECT_EQ(decode(*tok, r.render(records, 3).ids),
            "### Instruction:\nSay hello.\n\n### Response:\nHello<|endoftext|>");
}

TEST(Instruct, PromptCompletionRecordsRender) {
  auto tok = kiln::make_tokenizer("byte");
  const auto records = kiln::read_instruct_file(kDataDir + "completion.jsonl", {});
  const auto r = renderer(*tok, kiln::TemplateSet::builtin());
  const kiln::Example ex = r.render(records, 0);
  EXPECT_EQ(decode(*tok, ex.ids), "The capital of France is Paris.<|endoftext|>");
  EXPECT_EQ(masked_text(*tok, ex), " Paris.<|endoftext|>");
  for (std::size_t i = 0; i < std::string("The capital of France is").size(); ++i) EXPECT_EQ(ex.mask[i], 0) << i;
  // A record that no template fits is an error naming its file:line and the template file.
  const auto alpaca = kiln::read_instruct_file(kDataDir + "alpaca.jsonl", {});
  const auto only_completion = renderer(*tok, kiln::TemplateSet::parse(
      "templates:\n  - {name: pc, prompt: \"{prompt}\", response: \"{completion}\"}\n", "pc.yaml"));
  const std::string msg = error_of([&] { only_completion.render(alpaca, 1); });
  EXPECT_NE(msg.find("alpaca.jsonl:2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("pc.yaml"), std::string::npos) << msg;
}

TEST(Instruct, ChatRecordsTrainEveryAssistantTurn) {
  auto tok = kiln::make_tokenizer("byte");
  const auto records = kiln::read_instruct_file(kDataDir + "chat.jsonl", {});
  const auto r = renderer(*tok, kiln::TemplateSet::builtin());
  const kiln::Example ex = r.render(records, 0);
  EXPECT_EQ(decode(*tok, ex.ids),
            "Be brief.\n\nUser: Hi\n\nAssistant: Hello!<|endoftext|>User: Bye\n\nAssistant: Goodbye.<|endoftext|>");
  EXPECT_EQ(masked_text(*tok, ex), "Hello!<|endoftext|>Goodbye.<|endoftext|>");
  // A chat that ends with a user turn has no response to train: an error naming the line.
  const std::string path = write_temp("chat_bad.jsonl", R"({"messages": [{"role": "user", "content": "Hi"}]})" "\n");
  EXPECT_NE(error_of([&] { kiln::read_instruct_file(path, {}); }).find(path + ":1"), std::string::npos);
}

TEST(Instruct, OptionsRenderInTheTemplateOrAsASuffix) {
  auto tok = kiln::make_tokenizer("byte");
  const auto records = kiln::read_instruct_file(kDataDir + "nli.jsonl", {});
  const auto in_template = renderer(*tok, kiln::TemplateSet::parse(R"(
fields: [premise, hypothesis]
templates:
  - {name: t, prompt: "P: {premise} H: {hypothesis}\n{options}\nA: ", response: "{output}"}
)", "inline.yaml"));
  EXPECT_EQ(decode(*tok, in_template.render(records, 0).ids),
            "P: A dog runs. H: An animal moves.\nOPTIONS:\n- yes\n- no\nA: yes<|endoftext|>");
  const auto as_suffix = renderer(*tok, kiln::TemplateSet::parse(R"(
fields: [premise, hypothesis]
templates:
  - {name: t, prompt: "{premise} Is it true that {hypothesis}?", response: " {output}"}
)", "inline.yaml"));
  const kiln::Example ex = as_suffix.render(records, 1);
  EXPECT_EQ(decode(*tok, ex.ids),
            "A cat sleeps. Is it true that The cat is running.?\n\nOPTIONS:\n- yes\n- no no<|endoftext|>");
  EXPECT_EQ(masked_text(*tok, ex), " no<|endoftext|>");
  // Literal braces.
  const auto braces = renderer(*tok, kiln::TemplateSet::parse(
      "fields: [premise]\ntemplates:\n  - {name: b, prompt: \"{{x}} {premise}\", response: \"{output}\"}\n", "b.yaml"));
  EXPECT_EQ(decode(*tok, braces.render(records, 2).ids).substr(0, 13), "{x} It rains.");
}

TEST(Instruct, KShotExemplarsAreSeededAndNeverTheExampleItself) {
  auto tok = kiln::make_tokenizer("byte");
  const auto records = kiln::read_instruct_file(kDataDir + "nli.jsonl", {});
  const auto set = kiln::TemplateSet::load(kDataDir + "nli.yaml");
  const auto a = renderer(*tok, set, 2, 7), b = renderer(*tok, set, 2, 7), c = renderer(*tok, set, 2, 8);
  bool seed_matters = false;
  for (std::size_t i = 0; i < records.size(); ++i)
    for (std::uint64_t draw = 0; draw < 3; ++draw) {
      const auto picked = a.exemplars(records, i, draw);
      ASSERT_EQ(picked.size(), 2u);
      EXPECT_NE(picked[0], i);
      EXPECT_NE(picked[1], i);
      EXPECT_NE(picked[0], picked[1]);
      EXPECT_EQ(picked, b.exemplars(records, i, draw));
      seed_matters |= picked != c.exemplars(records, i, draw);
      const kiln::Example ex = a.render(records, i, draw);
      EXPECT_EQ(ex.ids, b.render(records, i, draw).ids);
      const std::string text = decode(*tok, ex.ids);
      // The example's own premise appears once (as the question), each exemplar's once.
      const std::string own = records[i].fields.at("premise");
      EXPECT_EQ(text.find(own), text.rfind(own)) << text;
      for (std::size_t j : picked) EXPECT_NE(text.find(records[j].fields.at("premise")), std::string::npos);
      // Only the final answer is trained: exemplar answers are prompt text.
      const std::string answer = masked_text(*tok, ex), output = records[i].fields.at("output");
      EXPECT_TRUE(answer == output + "<|endoftext|>" || answer == " " + output + "<|endoftext|>") << answer;
    }
  EXPECT_TRUE(seed_matters);
  // k-shot needs k other records.
  const auto too_many = renderer(*tok, set, 6);
  EXPECT_NE(error_of([&] { too_many.render(records, 0); }).find("k_shot=6"), std::string::npos);
}

TEST(Instruct, UnknownTemplateVariableNamesFileTemplateAndVariable) {
  const std::string msg = error_of([] {
    kiln::TemplateSet::parse("templates:\n  - {name: alpaca, prompt: \"{instrution}\", response: \"{output}\"}\n",
                             "configs/bad.yaml");
  });
  EXPECT_NE(msg.find("configs/bad.yaml"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'alpaca'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("{instrution}"), std::string::npos) << msg;
}

TEST(Instruct, MalformedJsonlNamesFileAndLine) {
  const std::string path = write_temp("bad.jsonl",
                                      "{\"instruction\": \"a\", \"output\": \"b\"}\n"
                                      "{\"instruction\": \"a\", \"output\": \n"
                                      "\n"
                                      "{\"instruction\": \"a\"}\n"
                                      "[1, 2]\n"
                                      "{\"prompt\": \"p\", \"completion\": \"c\"}\n");
  std::string msg = error_of([&] { kiln::read_instruct_file(path, {}); });
  EXPECT_NE(msg.find(path + ":2"), std::string::npos) << msg;
  // Past the bad JSON: the missing field is named with its line.
  const std::string missing = write_temp("missing.jsonl", "{\"prompt\": \"p\", \"completion\": \"c\"}\n\n{\"instruction\": \"a\"}\n");
  msg = error_of([&] { kiln::read_instruct_file(missing, {}); });
  EXPECT_NE(msg.find(missing + ":3"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'output'"), std::string::npos) << msg;
}

TEST(Instruct, SkipBadRecordsCountsWhatItSkips) {
  const std::string path = write_temp("skip.jsonl",
                                      "{\"instruction\": \"a\", \"output\": \"b\"}\n"
                                      "not json\n"
                                      "{\"instruction\": \"a\"}\n"
                                      "[1, 2]\n"
                                      "{\"prompt\": \"p\", \"completion\": \"c\"}\n");
  kiln::JsonlStats stats;
  const auto records = kiln::read_instruct_file(path, {.skip_bad_records = true}, &stats);
  EXPECT_EQ(records.size(), 2u);
  EXPECT_EQ(stats.records, 2);
  EXPECT_EQ(stats.skipped, 3);
  EXPECT_NE(stats.first_skipped.find(path + ":2"), std::string::npos) << stats.first_skipped;
}

TEST(Instruct, PreferencePairSharesThePrompt) {
  auto tok = kiln::make_tokenizer("byte");
  const auto records = kiln::read_preference_file(kDataDir + "preference.jsonl", {});
  const auto r = renderer(*tok, kiln::TemplateSet::builtin());
  const kiln::PreferencePair pair = r.render_preference(records, 0);
  EXPECT_EQ(decode(*tok, pair.chosen.ids), "Write a greeting.Hello, friend!<|endoftext|>");
  EXPECT_EQ(decode(*tok, pair.rejected.ids), "Write a greeting.Go away.<|endoftext|>");
  ASSERT_EQ(pair.prompt_tokens, std::string("Write a greeting.").size());
  for (std::size_t i = 0; i < pair.prompt_tokens; ++i) {
    EXPECT_EQ(pair.chosen.ids[i], pair.rejected.ids[i]);
    EXPECT_EQ(pair.chosen.mask[i], 0);
    EXPECT_EQ(pair.rejected.mask[i], 0);
  }
  EXPECT_EQ(masked_text(*tok, pair.chosen), "Hello, friend!<|endoftext|>");
  EXPECT_EQ(masked_text(*tok, pair.rejected), "Go away.<|endoftext|>");
}

TEST(Instruct, MixtureAppliesCapsWeightsAndIsDeterministic) {
  auto tok = kiln::make_tokenizer("byte");
  const auto config = kiln::MixtureConfig::load(kDataDir + "mixture.yaml");
  ASSERT_EQ(config.tasks.size(), 2u);
  kiln::InstructMixture a(config, *tok), b(config, *tok);
  // nli: cap 4, weight 2 -> 8 examples; alpaca: 4 records, weight 0.5 -> 2.
  ASSERT_EQ(a.size(), 10u);
  int nli = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    nli += a.task_of(i) == "nli";
    EXPECT_EQ(a.example(i).ids, b.example(i).ids) << i;
  }
  EXPECT_EQ(nli, 8);
  const std::string bad = write_temp("mix_bad.yaml", "tasks:\n  - {name: x, file: a.jsonl, wieght: 2}\n");
  EXPECT_NE(error_of([&] { kiln::MixtureConfig::load(bad); }).find("'wieght'"), std::string::npos);
}

// FLAN's held-out protocol: held-out clusters (with their related group) never reach the
// training examples; a training task sharing a held-out task's data file is dropped; a held-out
// cluster no task has is an error naming the file and line.
TEST(Instruct, HeldOutClustersNeverReachTraining) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / "kiln_test_instruct_holdout";
  fs::create_directories(dir);
  for (const char* name : {"a1", "a2", "b1", "d1"}) {
    std::ofstream out(dir / (std::string(name) + ".jsonl"));
    for (int i = 0; i < 4; ++i)
      out << R"({"prompt": "task )" << name << " item " << i << R"(", "completion": "answer )" << name << R"("})" << "\n";
  }
  const std::string tasks = "tasks:\n"
                            "  - {name: a1, cluster: A, file: a1.jsonl}\n"
                            "  - {name: a2, cluster: A, file: a2.jsonl}\n"
                            "  - {name: b1, cluster: B, file: b1.jsonl}\n"
                            "  - {name: c1, cluster: C, file: b1.jsonl}\n"  // B's data under another cluster
                            "  - {name: d1, cluster: D, file: d1.jsonl}\n";
  std::ofstream(dir / "mix.yaml") << "seed: 1\nholdout_clusters: [B]\nrelated_clusters: [[B, D]]\n" << tasks;
  const kiln::MixtureConfig config = kiln::MixtureConfig::load((dir / "mix.yaml").string());
  std::set<std::string> trained, held;
  for (const auto& t : config.tasks) trained.insert(t.name);
  for (const auto& t : config.held_out) held.insert(t.name);
  EXPECT_EQ(trained, (std::set<std::string>{"a1", "a2"}));
  EXPECT_EQ(held, (std::set<std::string>{"b1", "d1"}));
  ASSERT_EQ(config.dropped.size(), 1u);
  EXPECT_EQ(config.dropped[0].first, "c1");
  EXPECT_EQ(config.holdout_clusters, (std::vector<std::string>{"B", "D"}));
  auto tok = kiln::make_tokenizer("byte");
  const kiln::InstructMixture mixture(config, *tok);
  ASSERT_EQ(mixture.size(), 8u);
  for (std::size_t i = 0; i < mixture.size(); ++i) {
    const std::string text = decode(*tok, mixture.example(i).ids);
    EXPECT_EQ(text.find("b1"), std::string::npos) << text;
    EXPECT_EQ(text.find("d1"), std::string::npos) << text;
  }
  const nlohmann::json record = config.split_record();
  EXPECT_EQ(record["held_out"].size(), 2u);
  EXPECT_EQ(record["dropped"][0]["task"], "c1");
  std::ofstream(dir / "bad.yaml") << "seed: 1\nholdout_clusters: [B, Z]\n" << tasks;
  const std::string e = error_of([&] { kiln::MixtureConfig::load((dir / "bad.yaml").string()); });
  EXPECT_NE(e.find("bad.yaml:2"), std::string::npos) << e;
  EXPECT_NE(e.find("'Z', which no task has as its cluster"), std::string::npos) << e;
  fs::remove_all(dir);
}

// ---- packing ---------------------------------------------------------------------------------

namespace {

kiln::Example make_example(std::vector<std::uint32_t> ids, std::vector<std::uint8_t> mask) {
  return kiln::Example{std::move(ids), std::move(mask)};
}

}  // namespace

TEST(Packing, PositionsRestartSegmentsMasksAndPadding) {
  const std::uint32_t eot = 256, pad = 0;
  const std::vector<kiln::Example> examples = {
      make_example({10, 11, 12, eot}, {0, 0, 1, 1}),
      make_example({20, 21, eot}, {0, 1, 1}),
      make_example({30, 31, 32, 33, eot}, {0, 0, 0, 1, 1}),
  };
  const kiln::Packed packed = kiln::pack_examples(examples, {.seq_len = 8, .pad_id = pad, .eot_id = eot}, 1);
  const kiln::Batch& b = packed.batch;
  ASSERT_EQ(b.batch, 2);
  ASSERT_EQ(b.seq_len, 8);
  using I = std::vector<std::int32_t>;
  using M = std::vector<std::uint8_t>;
  EXPECT_EQ(b.inputs, (I{10, 11, 12, 256, 20, 21, 256, 0, /**/ 30, 31, 32, 33, 256, 0, 0, 0}));
  EXPECT_EQ(b.targets, (I{11, 12, 256, 0, 21, 256, 0, 0, /**/ 31, 32, 33, 256, 0, 0, 0, 0}));
  EXPECT_EQ(b.positions, (I{0, 1, 2, 3, 0, 1, 2, 0, /**/ 0, 1, 2, 3, 4, 0, 1, 2}));
  EXPECT_EQ(b.segments, (I{0, 0, 0, 0, 1, 1, 1, 2, /**/ 0, 0, 0, 0, 0, 1, 1, 1}));
  EXPECT_EQ(b.mask, (M{0, 1, 1, 0, 1, 1, 0, 0, /**/ 0, 0, 1, 1, 0, 0, 0, 0}));
  EXPECT_EQ(packed.pad_tokens, 4);
  ASSERT_EQ(packed.placements.size(), 3u);
  EXPECT_EQ(packed.placements[1].row, 0);
  EXPECT_EQ(packed.placements[1].offset, 4);
  EXPECT_EQ(packed.placements[2].row, 1);
  // Rows rounded up to a multiple with a full row of padding.
  const kiln::Packed four = kiln::pack_examples(examples, {.seq_len = 8, .pad_id = pad, .eot_id = eot}, 4);
  EXPECT_EQ(four.batch.batch, 4);
  EXPECT_EQ(four.batch.loss_tokens(), b.loss_tokens());
  EXPECT_EQ(kiln::slice_rows(four.batch, 1, 1).inputs, (I{30, 31, 32, 33, 256, 0, 0, 0}));
}

TEST(Packing, LongExamplesAreAnErrorOrTruncated) {
  const std::vector<kiln::Example> examples = {make_example({1, 2, 3, 4, 5, 256}, {0, 0, 0, 1, 1, 1})};
  const std::string msg = error_of([&] { kiln::pack_examples(examples, {.seq_len = 4, .pad_id = 0, .eot_id = 256}); });
  EXPECT_NE(msg.find("seq_len=4"), std::string::npos) << msg;
  const kiln::Packed cut = kiln::pack_examples(
      examples, {.seq_len = 4, .pad_id = 0, .eot_id = 256, .overflow = kiln::Overflow::truncate});
  EXPECT_EQ(cut.truncated, 1);
  EXPECT_EQ(cut.batch.inputs, (std::vector<std::int32_t>{1, 2, 3, 4}));
  EXPECT_EQ(cut.batch.mask, (std::vector<std::uint8_t>{0, 0, 1, 0}));
  // Padding must not be the end-of-text id.
  EXPECT_NE(error_of([&] { kiln::pack_examples(examples, {.seq_len = 8, .pad_id = 256, .eot_id = 256}); })
                .find("pad_id"),
            std::string::npos);
}

// The key property: in a packed batch each example's loss equals its loss when run alone.
TEST(Packing, PackedLossEqualsEachExamplesSoloLoss) {
  auto tok = kiln::make_tokenizer("byte");
  kiln::GptShape shape;
  shape.n_layer = 2;
  shape.n_head = 2;
  shape.n_embd = 16;
  shape.context = 64;
  shape.vocab = 257;
  shape.padded_vocab = 320;
  shape.attention_block = 16;
  kiln::Gpt model(shape);
  model.init_weights(3, 0.3f);

  const auto r = renderer(*tok, kiln::TemplateSet::parse(R"(
templates:
  - {name: q, prompt: "Q: {instruction}\nA: ", response: "{output}"}
  - {name: qi, prompt: "Q: {instruction} ({input})\nA: ", response: "{output}"}
  - {name: pc, prompt: "{prompt}", response: "{completion}"}
chat: {user: "U: {content}\nA: ", assistant: "{content}"}
)", "packing.yaml"));
  std::vector<kiln::Example> examples;
  for (const char* file : {"alpaca.jsonl", "completion.jsonl"}) {
    const auto records = kiln::read_instruct_file(kDataDir + file, {});
    for (std::size_t i = 0; i < records.size(); ++i) examples.push_back(r.render(records, i));
  }
  const auto chat = kiln::read_instruct_file(kDataDir + "chat.jsonl", {});
  examples.push_back(r.render(chat, 0));
  for (const auto& ex : examples) ASSERT_LE(ex.size(), 64u);

  const kiln::Packed packed = kiln::pack_examples(examples, {.seq_len = 64, .pad_id = 0, .eot_id = tok->eot()}, 1);
  ASSERT_LT(packed.batch.batch, static_cast<int>(examples.size()));  // rows really hold several
  const double packed_total = model.forward(packed.batch);
  const std::vector<float> losses(model.losses().f32(), model.losses().f32() + packed.batch.batch * 64);
  double solo_total = 0;
  for (const auto& place : packed.placements) {
    const kiln::Example& ex = examples[place.example];
    double in_pack = 0;
    for (int i = 0; i < place.length; ++i) in_pack += losses[place.row * 64 + place.offset + i];
    // Alone: one row of exactly the example, next-token targets, the last position masked.
    kiln::Batch solo;
    solo.batch = 1;
    solo.seq_len = static_cast<int>(ex.size());
    for (std::size_t i = 0; i < ex.size(); ++i) {
      const bool last = i + 1 == ex.size();
      solo.inputs.push_back(static_cast<std::int32_t>(ex.ids[i]));
      solo.targets.push_back(last ? 0 : static_cast<std::int32_t>(ex.ids[i + 1]));
      solo.mask.push_back(last ? 0 : ex.mask[i + 1]);
    }
    const double alone = model.forward(solo);
    ASSERT_GT(alone, 0.0);
    EXPECT_NEAR(in_pack, alone, 1e-5 * alone) << "example " << place.example;
    solo_total += alone;
  }
  EXPECT_NEAR(packed_total, solo_total, 1e-5 * solo_total);
}

TEST(Instruct, NumbersOutOfRangeAreJsonErrorsNotCrashes) {
  // Found by scripts/fuzz.sh: nlohmann::json throws out_of_range, not parse_error, for 2e464.
  const std::string path = ::testing::TempDir() + "/kiln_overflow.jsonl";
  std::ofstream(path) << "{\"instruction\": \"a\", \"output\": \"b\"}\n2e464\n";
  try {
    kiln::read_jsonl(path, {}, [](const nlohmann::json&, const std::string&) {});
    FAIL() << "expected an error";
  } catch (const kiln::Error& e) {
    EXPECT_NE(std::string(e.what()).find("kiln_overflow.jsonl:2"), std::string::npos) << e.what();
  }
}
