// Shortest augmenting path assignment (see hungarian.h). One search per unmatched row of the
// short side: Dijkstra over reduced costs from that row to the nearest free column, then a
// dual update and an augmentation along the path. Square problems first match each column
// to its cheapest row where that row is free (the column-reduction step of Jonker-Volgenant),
// which leaves far fewer searches; rectangular problems cannot use it because the free
// columns of the long side must keep the largest column dual.
#include "hungarian.h"

#include <algorithm>
#include <exception>
#include <limits>
#include <mutex>
#include <thread>

namespace maskformer_fast {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

const char* describe(LsaStatus status) {
  switch (status) {
    case LsaStatus::kInfeasible:
      return "is infeasible (no complete matching avoids the +inf entries)";
    case LsaStatus::kInvalidEntry:
      return "contains NaN or -inf";
    default:
      return "is fine";
  }
}

// Copies the problem into ws.cost as a contiguous [short side, long side] float64 matrix.
// Returns false if any entry is NaN or -inf.
template <typename T>
bool load_problem(const T* cost, int64_t rows, int64_t cols, int64_t row_stride, bool transpose,
                  std::vector<double>& dst) {
  dst.resize(static_cast<size_t>(rows * cols));
  bool bad = false;
  for (int64_t i = 0; i < rows; ++i) {
    const T* src = cost + i * row_stride;
    for (int64_t j = 0; j < cols; ++j) {
      const double x = static_cast<double>(src[j]);
      bad |= (x != x) | (x == -kInf);
      dst[transpose ? j * rows + i : i * cols + j] = x;
    }
  }
  return !bad;
}

// Square problems: v[j] = min_i c[i, j], and column j is matched to its argmin row when that
// row is still free. All reduced costs c - u - v stay >= 0 with the matched pairs tight,
// which is the invariant the searches need.
LsaStatus reduce_columns(const double* c, int64_t n, LsaWorkspace& ws) {
  std::vector<int64_t>& argmin = ws.path;  // reused: path is rewritten by every search
  std::fill(ws.v.begin(), ws.v.end(), kInf);
  for (int64_t i = 0; i < n; ++i) {
    const double* ci = c + i * n;
    for (int64_t j = 0; j < n; ++j) {
      if (ci[j] < ws.v[j]) {
        ws.v[j] = ci[j];
        argmin[j] = i;
      }
    }
  }
  for (int64_t j = 0; j < n; ++j) {
    if (ws.v[j] == kInf) return LsaStatus::kInfeasible;  // a column with no allowed row
    const int64_t i = argmin[j];
    if (ws.col4row[i] == -1) {
      ws.col4row[i] = j;
      ws.row4col[j] = i;
    }
  }
  return LsaStatus::kOk;
}

// One search from the free row cur_row, then dual update and augmentation.
LsaStatus augment_from(const double* c, int64_t nc, int64_t cur_row, LsaWorkspace& ws) {
  double* u = ws.u.data();
  double* v = ws.v.data();
  double* shortest = ws.shortest.data();
  int64_t* path = ws.path.data();
  int64_t* row4col = ws.row4col.data();
  int64_t* remaining = ws.remaining.data();

  std::fill(shortest, shortest + nc, kInf);
  for (int64_t j = 0; j < nc; ++j) remaining[j] = j;
  int64_t num_remaining = nc;  // remaining[num_remaining:] are the columns already reached
  ws.visited_rows.clear();

  double min_val = 0.0;
  int64_t i = cur_row;
  int64_t sink = -1;
  while (sink == -1) {
    ws.visited_rows.push_back(i);
    const double* ci = c + i * nc;
    const double base = min_val - u[i];
    int64_t index_lowest = -1;
    double lowest = kInf;
    for (int64_t it = 0; it < num_remaining; ++it) {
      const int64_t j = remaining[it];
      const double r = base + ci[j] - v[j];
      if (r < shortest[j]) {
        path[j] = i;
        shortest[j] = r;
      }
      // Among equally short columns prefer a free one: the search ends there.
      if (shortest[j] < lowest || (shortest[j] == lowest && row4col[j] == -1)) {
        lowest = shortest[j];
        index_lowest = it;
      }
    }
    min_val = lowest;
    if (min_val == kInf) return LsaStatus::kInfeasible;
    const int64_t j = remaining[index_lowest];
    if (row4col[j] == -1) {
      sink = j;
    } else {
      i = row4col[j];
    }
    std::swap(remaining[index_lowest], remaining[--num_remaining]);
  }

  u[cur_row] += min_val;
  for (size_t k = 1; k < ws.visited_rows.size(); ++k) {
    const int64_t r = ws.visited_rows[k];
    u[r] += min_val - shortest[ws.col4row[r]];
  }
  for (int64_t it = num_remaining; it < nc; ++it) {
    const int64_t j = remaining[it];
    v[j] -= min_val - shortest[j];
  }

  for (int64_t j = sink;;) {
    const int64_t r = path[j];
    row4col[j] = r;
    std::swap(ws.col4row[r], j);
    if (r == cur_row) break;
  }
  return LsaStatus::kOk;
}

// Solves the contiguous nr x nc (nr <= nc) problem in ws.cost; the result is ws.col4row.
LsaStatus solve_short_side(int64_t nr, int64_t nc, LsaWorkspace& ws) {
  const double* c = ws.cost.data();
  ws.u.assign(nr, 0.0);
  ws.v.assign(nc, 0.0);
  ws.shortest.resize(nc);
  ws.path.assign(nc, -1);
  ws.col4row.assign(nr, -1);
  ws.row4col.assign(nc, -1);
  ws.remaining.resize(nc);
  if (nr == nc) {
    const LsaStatus status = reduce_columns(c, nr, ws);
    if (status != LsaStatus::kOk) return status;
  }
  for (int64_t row = 0; row < nr; ++row) {
    if (ws.col4row[row] != -1) continue;
    const LsaStatus status = augment_from(c, nc, row, ws);
    if (status != LsaStatus::kOk) return status;
  }
  return LsaStatus::kOk;
}

}  // namespace

LsaError::LsaError(int64_t batch_index, LsaStatus status)
    : std::invalid_argument("cost matrix " + std::to_string(batch_index) + " " + describe(status)),
      batch_index_(batch_index),
      status_(status) {}

template <typename T>
LsaStatus solve_lsa(const T* cost, int64_t rows, int64_t cols, int64_t row_stride,
                    int64_t* col_for_row, LsaWorkspace& ws) {
  std::fill(col_for_row, col_for_row + rows, -1);
  if (rows == 0 || cols == 0) return LsaStatus::kOk;
  const bool transpose = rows > cols;  // solve on the short side, as scipy does
  if (!load_problem(cost, rows, cols, row_stride, transpose, ws.cost)) {
    return LsaStatus::kInvalidEntry;
  }
  const int64_t nr = transpose ? cols : rows;
  const int64_t nc = transpose ? rows : cols;
  const LsaStatus status = solve_short_side(nr, nc, ws);
  if (status != LsaStatus::kOk) return status;
  for (int64_t r = 0; r < nr; ++r) {
    if (transpose) {
      col_for_row[ws.col4row[r]] = r;
    } else {
      col_for_row[r] = ws.col4row[r];
    }
  }
  return LsaStatus::kOk;
}

ParallelFor thread_parallel_for(int num_threads) {
  if (num_threads <= 0) num_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return [num_threads](int64_t n, const std::function<void(int64_t, int64_t)>& body) {
    const int64_t chunks = std::min<int64_t>(num_threads, n);
    if (chunks <= 1) {
      if (n > 0) body(0, n);
      return;
    }
    std::exception_ptr error;
    std::mutex error_mutex;
    auto run_chunk = [&](int64_t k) {
      try {
        body(n * k / chunks, n * (k + 1) / chunks);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
      }
    };
    std::vector<std::thread> workers;
    for (int64_t k = 1; k < chunks; ++k) workers.emplace_back(run_chunk, k);
    run_chunk(0);  // the calling thread takes the first chunk
    for (std::thread& w : workers) w.join();
    if (error) std::rethrow_exception(error);
  };
}

template <typename T>
void solve_lsa_batch(const T* cost, int64_t batch, int64_t rows, int64_t cols,
                     const int64_t* num_cols, int64_t* out, const ParallelFor& parallel_for) {
  if (batch < 0 || rows < 0 || cols < 0) throw std::invalid_argument("negative problem size");
  for (int64_t b = 0; num_cols != nullptr && b < batch; ++b) {
    if (num_cols[b] < 0 || num_cols[b] > cols) {
      throw std::invalid_argument("num_cols[" + std::to_string(b) + "] = " +
                                  std::to_string(num_cols[b]) + " is outside [0, " +
                                  std::to_string(cols) + "]");
    }
  }
  std::vector<LsaStatus> status(static_cast<size_t>(batch), LsaStatus::kOk);
  parallel_for(batch, [&](int64_t begin, int64_t end) {
    LsaWorkspace ws;
    for (int64_t b = begin; b < end; ++b) {
      const int64_t valid_cols = num_cols == nullptr ? cols : num_cols[b];
      status[b] = solve_lsa(cost + b * rows * cols, rows, valid_cols, cols, out + b * rows, ws);
    }
  });
  for (int64_t b = 0; b < batch; ++b) {
    if (status[b] != LsaStatus::kOk) throw LsaError(b, status[b]);
  }
}

template LsaStatus solve_lsa<float>(const float*, int64_t, int64_t, int64_t, int64_t*, LsaWorkspace&);
template LsaStatus solve_lsa<double>(const double*, int64_t, int64_t, int64_t, int64_t*, LsaWorkspace&);
template void solve_lsa_batch<float>(const float*, int64_t, int64_t, int64_t, const int64_t*, int64_t*,
                                     const ParallelFor&);
template void solve_lsa_batch<double>(const double*, int64_t, int64_t, int64_t, const int64_t*, int64_t*,
                                      const ParallelFor&);

}  // namespace maskformer_fast
