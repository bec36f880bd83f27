// Exact rectangular linear sum assignment (shortest augmenting path, Jonker-Volgenant as
// formulated by Crouse 2016 -- the algorithm behind scipy.optimize.linear_sum_assignment),
// batched over padded problems. No torch dependency: the pybind11 binding and the C++ unit
// test both build on this header.
#pragma once

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace maskformer_fast {

enum class LsaStatus : int8_t {
  kOk = 0,
  kInfeasible = 1,    // no complete matching avoids the +inf (forbidden) pairs
  kInvalidEntry = 2,  // a NaN or -inf cost
};

// Thrown by solve_lsa_batch for the first (lowest batch index) problem that failed.
class LsaError : public std::invalid_argument {
 public:
  LsaError(int64_t batch_index, LsaStatus status);
  int64_t batch_index() const { return batch_index_; }
  LsaStatus status() const { return status_; }

 private:
  int64_t batch_index_;
  LsaStatus status_;
};

// Scratch memory of one solver thread, grown on demand and reused across problems.
struct LsaWorkspace {
  std::vector<double> cost;      // the problem as [short side, long side], contiguous
  std::vector<double> u, v;      // row and column duals
  std::vector<double> shortest;  // shortest path length to each column in one search
  std::vector<double> blocked;   // 0 for columns open in the current search, +inf once reached
  std::vector<double> taken;     // 0 for free columns, +inf for matched ones
  std::vector<int64_t> path;     // row preceding each column on its shortest path
  std::vector<int64_t> col4row, row4col;
  std::vector<int64_t> visited_rows;  // rows reached in the current search
  std::vector<int64_t> visited_cols;  // columns reached in the current search
};

// Solves one problem: cost[i * row_stride + j] for i < rows, j < cols (row_stride >= cols).
// Writes col_for_row[i] = matched column or -1 (rows > cols leaves rows - cols unmatched).
// The minimum is over matchings of size min(rows, cols), as scipy's. Arithmetic is float64.
template <typename T>
LsaStatus solve_lsa(const T* cost, int64_t rows, int64_t cols, int64_t row_stride,
                    int64_t* col_for_row, LsaWorkspace& ws);

// Calls task(k) for every k in [0, n): on the calling thread and on up to num_threads - 1
// helper threads, each taking the next k from a shared counter. Returns once every task ran,
// without waiting for a helper that never got a core (on a busy machine the caller just does
// the work itself). Rethrows the first exception a task threw.
void parallel_for_each(int64_t n, int num_threads, const std::function<void(int64_t)>& task);

// Solves problem b = cost[b, :, :num_cols[b]] (cost is contiguous [batch, rows, cols]) for
// every b on num_threads threads, writing out[b, :rows]. num_cols == nullptr means every
// problem uses all cols. Throws LsaError naming the lowest failing batch index after all
// problems ran, std::invalid_argument for a num_cols entry outside [0, cols].
template <typename T>
void solve_lsa_batch(const T* cost, int64_t batch, int64_t rows, int64_t cols,
                     const int64_t* num_cols, int64_t* out, int num_threads);

}  // namespace maskformer_fast
