// Unit test of the C++ assignment core against brute-force enumeration (run by ctest).
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "hungarian.h"

using maskformer_fast::LsaError;
using maskformer_fast::LsaStatus;
using maskformer_fast::LsaWorkspace;

namespace {

int g_failures = 0;

#define CHECK(cond, ...)                                          \
  do {                                                            \
    if (!(cond)) {                                                \
      ++g_failures;                                               \
      std::fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, \
                   __LINE__, #cond);                              \
      std::fprintf(stderr, __VA_ARGS__);                          \
      std::fprintf(stderr, "\n");                                 \
    }                                                             \
  } while (0)

constexpr double kInf = std::numeric_limits<double>::infinity();

// Minimum total over matchings of size min(rows, cols) that avoid +inf, by enumerating every
// injective map of the short side into the long side; +inf when none exists.
double brute_force_min(const std::vector<double>& c, int rows, int cols) {
  const bool by_rows = rows <= cols;
  const int n_short = by_rows ? rows : cols, n_long = by_rows ? cols : rows;
  std::vector<char> used(n_long, 0);
  double best = kInf;
  std::function<void(int, double)> rec = [&](int k, double acc) {
    if (k == n_short) {
      best = std::min(best, acc);
      return;
    }
    for (int l = 0; l < n_long; ++l) {
      if (used[l]) continue;
      const double x = by_rows ? c[k * cols + l] : c[l * cols + k];
      if (x == kInf) continue;
      used[l] = 1;
      rec(k + 1, acc + x);
      used[l] = 0;
    }
  };
  rec(0, 0.0);
  return best;
}

// Checks that col_for_row is a one-to-one matching of size min(rows, cols) and returns its cost.
double matching_cost(const std::vector<double>& c, int rows, int cols, const int64_t* col_for_row,
                     const std::string& what) {
  std::set<int64_t> cols_used;
  double total = 0.0;
  int matched = 0;
  for (int i = 0; i < rows; ++i) {
    const int64_t j = col_for_row[i];
    if (j == -1) continue;
    CHECK(j >= 0 && j < cols, "%s: row %d matched to column %lld", what.c_str(), i, (long long)j);
    if (j < 0 || j >= cols) return kInf;
    CHECK(cols_used.insert(j).second, "%s: column %lld matched twice", what.c_str(), (long long)j);
    total += c[i * cols + j];
    ++matched;
  }
  CHECK(matched == std::min(rows, cols), "%s: %d rows matched, want %d", what.c_str(), matched,
        std::min(rows, cols));
  return total;
}

void check_optimal(const std::vector<double>& c, int rows, int cols, const std::string& what) {
  LsaWorkspace ws;
  std::vector<int64_t> out(rows, -7);
  const LsaStatus status = maskformer_fast::solve_lsa(c.data(), rows, cols, cols, out.data(), ws);
  const double expected = brute_force_min(c, rows, cols);
  if (expected == kInf) {
    CHECK(status == LsaStatus::kInfeasible, "%s: want infeasible", what.c_str());
    return;
  }
  CHECK(status == LsaStatus::kOk, "%s: status %d", what.c_str(), static_cast<int>(status));
  const double got = matching_cost(c, rows, cols, out.data(), what);
  CHECK(std::abs(got - expected) <= 1e-9 * std::max(1.0, std::abs(expected)), "%s: cost %.17g, want %.17g",
        what.c_str(), got, expected);
}

void test_hand_computed() {
  // Rows 0, 1, 2 -> columns 1, 0, 2: 1 + 2 + 2 = 5 (greedy row minima would collide on column 1).
  const std::vector<double> c = {4, 1, 3, 2, 0, 5, 3, 2, 2};
  LsaWorkspace ws;
  int64_t out[3];
  CHECK(maskformer_fast::solve_lsa(c.data(), 3, 3, 3, out, ws) == LsaStatus::kOk, "hand example");
  CHECK(out[0] == 1 && out[1] == 0 && out[2] == 2, "hand example: got %lld %lld %lld", (long long)out[0],
        (long long)out[1], (long long)out[2]);
}

void test_random_against_brute_force() {
  std::mt19937 rng(1234);
  std::uniform_real_distribution<double> uniform(-1.0, 1.0);
  std::uniform_int_distribution<int> small_int(0, 3);
  std::uniform_int_distribution<int> side(1, 7);
  std::bernoulli_distribution forbid(0.25);
  for (int trial = 0; trial < 1500; ++trial) {
    const int rows = side(rng), cols = side(rng);
    std::vector<double> c(rows * cols);
    const int kind = trial % 3;  // uniform, integer ties, large magnitudes with forbidden pairs
    for (double& x : c) {
      x = kind == 1 ? small_int(rng) : uniform(rng);
      if (kind == 2) x = forbid(rng) ? kInf : 1e6 * x;
    }
    check_optimal(c, rows, cols, "trial " + std::to_string(trial) + " (" + std::to_string(rows) + "x" +
                                     std::to_string(cols) + ")");
  }
}

void test_float32_and_strided() {
  // A [2, 3] problem stored with row stride 5 (the padded layout of a batch), as float32.
  const std::vector<float> c = {3, 1, 2, 99, 99, 1, 5, 9, 99, 99};
  LsaWorkspace ws;
  int64_t out[2];
  CHECK(maskformer_fast::solve_lsa(c.data(), 2, 3, 5, out, ws) == LsaStatus::kOk, "float32");
  CHECK(out[0] == 1 && out[1] == 0, "float32 strided: got %lld %lld", (long long)out[0], (long long)out[1]);
}

void test_empty_and_invalid() {
  LsaWorkspace ws;
  int64_t out[3] = {5, 5, 5};
  const double none[1] = {0};
  CHECK(maskformer_fast::solve_lsa(none, 3, 0, 0, out, ws) == LsaStatus::kOk, "3x0");
  CHECK(out[0] == -1 && out[1] == -1 && out[2] == -1, "3x0 rows must be unmatched");
  const double nan_cost[4] = {1, std::nan(""), 2, 3};
  CHECK(maskformer_fast::solve_lsa(nan_cost, 2, 2, 2, out, ws) == LsaStatus::kInvalidEntry, "NaN");
  const double neg_inf_cost[2] = {1, -kInf};
  CHECK(maskformer_fast::solve_lsa(neg_inf_cost, 2, 1, 1, out, ws) == LsaStatus::kInvalidEntry, "-inf");
  const double infeasible[4] = {kInf, 1, kInf, 2};  // both rows can only take column 1
  CHECK(maskformer_fast::solve_lsa(infeasible, 2, 2, 2, out, ws) == LsaStatus::kInfeasible, "infeasible");
}

void test_batch() {
  // 40 problems of 6 rows padded to 5 columns, num_cols 0..5; the padding holds garbage.
  const int batch = 40, rows = 6, cols = 5;
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::vector<double> cost(batch * rows * cols);
  std::vector<int64_t> num_cols(batch);
  for (int b = 0; b < batch; ++b) {
    num_cols[b] = b % (cols + 1);
    for (int i = 0; i < rows; ++i)
      for (int j = 0; j < cols; ++j)
        cost[(b * rows + i) * cols + j] = j < num_cols[b] ? uniform(rng) : std::nan("");
  }
  std::vector<int64_t> out(batch * rows);
  maskformer_fast::solve_lsa_batch(cost.data(), batch, rows, cols, num_cols.data(), out.data(),
                                   3);
  for (int b = 0; b < batch; ++b) {
    const int k = static_cast<int>(num_cols[b]);
    std::vector<double> c(rows * k);
    for (int i = 0; i < rows; ++i)
      for (int j = 0; j < k; ++j) c[i * k + j] = cost[(b * rows + i) * cols + j];
    const std::string what = "batch " + std::to_string(b);
    const double got = matching_cost(c, rows, k, out.data() + b * rows, what);
    const double expected = brute_force_min(c, rows, k);
    CHECK(std::abs(got - expected) <= 1e-12, "%s: cost %.17g, want %.17g", what.c_str(), got, expected);
  }

  // Problems 11 and 23 are bad: the error names the lowest index, after all problems ran.
  cost[(11 * rows + 2) * cols + 0] = -kInf;
  cost[(23 * rows + 0) * cols + 1] = std::nan("");
  try {
    maskformer_fast::solve_lsa_batch(cost.data(), batch, rows, cols, num_cols.data(), out.data(),
                                     2);
    CHECK(false, "bad batch did not throw");
  } catch (const LsaError& e) {
    CHECK(e.batch_index() == 11 && e.status() == LsaStatus::kInvalidEntry, "error names batch %lld: %s",
          (long long)e.batch_index(), e.what());
  }
  num_cols[3] = cols + 1;
  try {
    maskformer_fast::solve_lsa_batch(cost.data(), batch, rows, cols, num_cols.data(), out.data(),
                                     1);
    CHECK(false, "num_cols out of range did not throw");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("num_cols[3]") != std::string::npos, "message: %s", e.what());
  }
}

void test_batch_threads_match_sequential() {
  // Big enough that solve_lsa_batch starts its helper threads; each problem's answer must be
  // the one a sequential solve gives (the solver is deterministic).
  const int batch = 300, rows = 40, cols = 30;
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> small_int(0, 9);
  std::vector<float> cost(batch * rows * cols);
  for (float& x : cost) x = static_cast<float>(small_int(rng));
  std::vector<int64_t> num_cols(batch), out(batch * rows), expected(batch * rows);
  for (int b = 0; b < batch; ++b) num_cols[b] = b % (cols + 1);
  maskformer_fast::solve_lsa_batch(cost.data(), batch, rows, cols, num_cols.data(), out.data(), 4);
  LsaWorkspace ws;
  for (int b = 0; b < batch; ++b) {
    maskformer_fast::solve_lsa(cost.data() + b * rows * cols, rows, num_cols[b], cols, expected.data() + b * rows, ws);
  }
  CHECK(out == expected, "threaded batch differs from sequential solves");
}

}  // namespace

int main() {
  test_hand_computed();
  test_random_against_brute_force();
  test_float32_and_strided();
  test_empty_and_invalid();
  test_batch();
  test_batch_threads_match_sequential();
  if (g_failures != 0) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("test_hungarian: all checks passed\n");
  return 0;
}
