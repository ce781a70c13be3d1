// Collectives checked at whatever world size this binary runs with: ctest runs it alone (the
// single-rank communicator) and under mpirun with 2 and 3 ranks (sizes not divisible by the
// world included).
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <vector>

#include "parallel/communicator.h"
#include "test_world.h"

using kiln::testing::world;

namespace {
// A value every rank can predict for any (rank, index).
float value(int rank, std::int64_t i) { return static_cast<float>((rank + 1) * 1000 + i % 997); }
}  // namespace

TEST(Communicator, ChunksCoverEverythingOnce) {
  for (std::int64_t n : {0, 1, 7, 10, 1001}) {
    for (int size : {1, 2, 3, 8}) {
      std::int64_t next = 0;
      for (int r = 0; r < size; ++r) {
        const kiln::Chunk c = kiln::chunk_of(n, size, r);
        EXPECT_EQ(c.begin, next);
        EXPECT_LE(c.size(), n / size + 1);
        next = c.end;
      }
      EXPECT_EQ(next, n);
    }
  }
}

TEST(Communicator, AllReduceSums) {
  kiln::Communicator& comm = world();
  for (std::int64_t n : {1, 1000, 12345}) {
    std::vector<float> data(n);
    for (std::int64_t i = 0; i < n; ++i) data[i] = value(comm.rank(), i);
    comm.all_reduce(data.data(), n);
    for (std::int64_t i = 0; i < n; ++i) {
      double expect = 0;
      for (int r = 0; r < comm.size(); ++r) expect += value(r, i);
      ASSERT_EQ(data[i], static_cast<float>(expect)) << "n=" << n << " i=" << i;
    }
  }
}

// The n-double sum (the evaluator's): each value summed over ranks, in place.
TEST(Communicator, SumsDoublesInPlace) {
  kiln::Communicator& comm = world();
  std::vector<double> data(7);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = (comm.rank() + 1) * 0.1 + static_cast<double>(i);
  comm.sum(data.data(), static_cast<std::int64_t>(data.size()));
  for (std::size_t i = 0; i < data.size(); ++i) {
    double expect = 0;
    for (int r = 0; r < comm.size(); ++r) expect += (r + 1) * 0.1 + static_cast<double>(i);
    EXPECT_NEAR(data[i], expect, 1e-12) << i;
  }
}

TEST(Communicator, ReduceScatterAndAllGatherWithUnevenSizes) {
  kiln::Communicator& comm = world();
  for (std::int64_t n : {1, 10, 1001}) {
    std::vector<float> input(n);
    for (std::int64_t i = 0; i < n; ++i) input[i] = value(comm.rank(), i);
    const kiln::Chunk mine = kiln::chunk_of(n, comm.size(), comm.rank());
    std::vector<float> shard(std::max<std::int64_t>(mine.size(), 1));
    comm.reduce_scatter(input.data(), shard.data(), n);
    for (std::int64_t i = 0; i < mine.size(); ++i) {
      double expect = 0;
      for (int r = 0; r < comm.size(); ++r) expect += value(r, mine.begin + i);
      ASSERT_EQ(shard[i], static_cast<float>(expect));
    }
    std::vector<float> gathered(n, -1.0f);
    comm.all_gather(shard.data(), gathered.data(), n);
    for (std::int64_t i = 0; i < n; ++i) {
      double expect = 0;
      for (int r = 0; r < comm.size(); ++r) expect += value(r, i);
      ASSERT_EQ(gathered[i], static_cast<float>(expect)) << "n=" << n << " i=" << i;
    }
  }
}

TEST(Communicator, BroadcastSumBarrierAndAsyncOrder) {
  kiln::Communicator& comm = world();
  std::vector<float> data(33, static_cast<float>(comm.rank()));
  const int root = comm.size() - 1;
  comm.broadcast(data.data(), 33, root);
  for (float v : data) EXPECT_EQ(v, static_cast<float>(root));
  EXPECT_EQ(comm.sum(comm.rank() + 1.0), comm.size() * (comm.size() + 1) / 2.0);
  comm.barrier();
  // Several operations in flight at once complete, in order, each with its own result.
  std::vector<std::vector<float>> buffers(4, std::vector<float>(500));
  std::vector<std::unique_ptr<kiln::CommHandle>> handles;
  for (int b = 0; b < 4; ++b) {
    std::fill(buffers[b].begin(), buffers[b].end(), static_cast<float>(b + comm.rank()));
    handles.push_back(comm.all_reduce_async(buffers[b].data(), 500));
  }
  for (auto& h : handles) h->wait();
  for (int b = 0; b < 4; ++b) {
    const float expect = static_cast<float>(b * comm.size() + comm.size() * (comm.size() - 1) / 2);
    EXPECT_EQ(buffers[b][0], expect);
    EXPECT_EQ(buffers[b][499], expect);
  }
}

TEST(Communicator, SplitMakesIndependentGroups) {
  kiln::Communicator& comm = world();
  // Two colours: even and odd ranks.
  auto group = comm.split(comm.rank() % 2, comm.rank(), "parity");
  const int expected_size = (comm.size() + 1 - comm.rank() % 2) / 2;
  EXPECT_EQ(group->size(), expected_size);
  EXPECT_EQ(group->rank(), comm.rank() / 2);
  EXPECT_EQ(group->sum(1.0), static_cast<double>(expected_size));
}
