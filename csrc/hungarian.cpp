// Shortest augmenting path assignment (see hungarian.h). One search per unmatched row of the
// short side: Dijkstra over reduced costs from that row to the nearest free column, then a
// dual update and an augmentation along the path. Square problems first match each column
// to its cheapest row where that row is free (the column-reduction step of Jonker-Volgenant),
// which leaves far fewer searches; rectangular problems cannot use it because the free
// columns of the long side must keep the largest column dual.
#include "hungarian.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <system_error>
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
      ws.taken[j] = kInf;
    }
  }
  return LsaStatus::kOk;
}

// The lowest key of a scan and where it is: `column` is the first free column at that key if
// there is one (the search ends there), else the first column at it.
struct ScanResult {
  double lowest;
  int64_t column;
};

// Keeps (value, index) of the first strict minimum; used per SIMD lane and for the tail.
inline void keep_min(double value, int64_t index, double& best, int64_t& best_index) {
  if (value < best || (value == best && index < best_index)) {
    best = value;
    best_index = index;
  }
}

// One step of a search: relax every column from row i (`base` = path length so far - u[i]),
// then find the open column with the smallest label. blocked[j] is +inf for columns already
// reached (it freezes their label: r + inf < label never holds, and hides them from the
// minimum) and taken[j] is +inf for matched columns (it hides them from the free minimum).
// Branch-free over the columns: scipy's per-column branches mispredict constantly. Every
// value is finite or +inf (NaN and -inf are rejected up front), so the compares are exact.
// Lanes doubles at a time with GCC/clang vector extensions (one source for every width).
#if defined(__GNUC__)
template <int Lanes>
struct Simd;
template <>
struct Simd<2> {
  typedef double Vec __attribute__((vector_size(16), aligned(8)));
  typedef int64_t Mask __attribute__((vector_size(16), aligned(8)));
};
template <>
struct Simd<4> {
  typedef double Vec __attribute__((vector_size(32), aligned(8)));
  typedef int64_t Mask __attribute__((vector_size(32), aligned(8)));
};
#endif

template <int Lanes>
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
inline ScanResult scan_row_lanes(const double* __restrict ci, const double* __restrict v,
                                 const double* __restrict blocked, const double* __restrict taken, double base,
                                 int64_t i, int64_t nc, double* __restrict label, int64_t* __restrict path) {
  double lowest = kInf, lowest_free = kInf;
  int64_t column = -1, free_column = -1;
  int64_t j = 0;
#if defined(__GNUC__)
  using Vec = typename Simd<Lanes>::Vec;
  using Mask = typename Simd<Lanes>::Mask;
  // Per lane: the smallest key and free key seen and their first column (as a double).
  Vec lowest_v = Vec{} + kInf, lowest_free_v = lowest_v;
  Vec column_v = Vec{} - 1.0, free_column_v = column_v;
  Vec index_v = Vec{};
  for (int lane = 0; lane < Lanes; ++lane) index_v[lane] = lane;
  const Mask row_v = Mask{} + i;
  for (; j + Lanes <= nc; j += Lanes) {
    const Vec b = *reinterpret_cast<const Vec*>(blocked + j);
    const Vec old_label = *reinterpret_cast<const Vec*>(label + j);
    const Vec r = base + *reinterpret_cast<const Vec*>(ci + j) - *reinterpret_cast<const Vec*>(v + j) + b;
    const Mask better = r < old_label;
    const Vec new_label = better ? r : old_label;
    *reinterpret_cast<Vec*>(label + j) = new_label;
    Mask* path_v = reinterpret_cast<Mask*>(path + j);
    *path_v = better ? row_v : *path_v;

    const Vec key = new_label + b;
    const Mask lower = key < lowest_v;
    lowest_v = lower ? key : lowest_v;
    column_v = lower ? index_v : column_v;
    const Vec free_key = key + *reinterpret_cast<const Vec*>(taken + j);
    const Mask lower_free = free_key < lowest_free_v;
    lowest_free_v = lower_free ? free_key : lowest_free_v;
    free_column_v = lower_free ? index_v : free_column_v;
    index_v += Lanes;
  }
  for (int lane = 0; lane < Lanes; ++lane) {
    if (column_v[lane] >= 0) keep_min(lowest_v[lane], static_cast<int64_t>(column_v[lane]), lowest, column);
    if (free_column_v[lane] >= 0) {
      keep_min(lowest_free_v[lane], static_cast<int64_t>(free_column_v[lane]), lowest_free, free_column);
    }
  }
#endif
  for (; j < nc; ++j) {
    const double r = base + ci[j] - v[j] + blocked[j];
    if (r < label[j]) {
      label[j] = r;
      path[j] = i;
    }
    const double key = label[j] + blocked[j];
    if (key < lowest) keep_min(key, j, lowest, column);
    if (key + taken[j] < lowest_free) keep_min(key + taken[j], j, lowest_free, free_column);
  }
  return {lowest, lowest_free == lowest ? free_column : column};
}

#if defined(__x86_64__) && defined(__GNUC__)
// Four lanes where the CPU has AVX2 (chosen at run time), else the SSE2 baseline's two.
__attribute__((target("avx2"))) ScanResult scan_row_avx2(const double* ci, const double* v, const double* blocked,
                                                         const double* taken, double base, int64_t i, int64_t nc,
                                                         double* label, int64_t* path) {
  return scan_row_lanes<4>(ci, v, blocked, taken, base, i, nc, label, path);
}
const bool kHasAvx2 = __builtin_cpu_supports("avx2");
#endif

ScanResult scan_row(const double* ci, const double* v, const double* blocked, const double* taken, double base,
                    int64_t i, int64_t nc, double* label, int64_t* path) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (kHasAvx2) return scan_row_avx2(ci, v, blocked, taken, base, i, nc, label, path);
#endif
  return scan_row_lanes<2>(ci, v, blocked, taken, base, i, nc, label, path);
}

// One search from the free row cur_row (Dijkstra over reduced costs to the nearest free
// column), then the dual update and the augmentation along the path found.
LsaStatus augment_from(const double* c, int64_t nc, int64_t cur_row, LsaWorkspace& ws) {
  double* u = ws.u.data();
  double* v = ws.v.data();
  double* label = ws.shortest.data();
  double* blocked = ws.blocked.data();
  int64_t* path = ws.path.data();
  const int64_t* row4col = ws.row4col.data();

  std::fill(label, label + nc, kInf);
  std::fill(blocked, blocked + nc, 0.0);
  ws.visited_rows.clear();
  ws.visited_cols.clear();

  double min_val = 0.0;
  int64_t i = cur_row;
  int64_t sink = -1;
  while (sink == -1) {
    ws.visited_rows.push_back(i);
    const ScanResult next = scan_row(c + i * nc, v, blocked, ws.taken.data(), min_val - u[i], i, nc, label, path);
    if (next.lowest == kInf) return LsaStatus::kInfeasible;
    min_val = next.lowest;
    blocked[next.column] = kInf;
    ws.visited_cols.push_back(next.column);
    if (row4col[next.column] == -1) {
      sink = next.column;
    } else {
      i = row4col[next.column];
    }
  }

  u[cur_row] += min_val;
  for (size_t k = 1; k < ws.visited_rows.size(); ++k) {
    const int64_t r = ws.visited_rows[k];
    u[r] += min_val - label[ws.col4row[r]];
  }
  for (const int64_t j : ws.visited_cols) v[j] -= min_val - label[j];

  ws.taken[sink] = kInf;
  for (int64_t j = sink;;) {
    const int64_t r = path[j];
    ws.row4col[j] = r;
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
  ws.blocked.resize(nc);
  ws.taken.assign(nc, 0.0);
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

namespace {

// State shared by the caller and its helpers; helpers that start late keep it alive.
struct TaskQueue {
  std::function<void(int64_t)> task;
  int64_t size = 0;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> finished{0};
  std::mutex mutex;  // guards error, and pairs with all_done
  std::condition_variable all_done;
  std::exception_ptr error;

  void drain() {
    for (int64_t k = next.fetch_add(1); k < size; k = next.fetch_add(1)) {
      try {
        task(k);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex);
        if (!error) error = std::current_exception();
      }
      if (finished.fetch_add(1) + 1 == size) {
        std::lock_guard<std::mutex> lock(mutex);
        all_done.notify_all();
      }
    }
  }
};

}  // namespace

void parallel_for_each(int64_t n, int num_threads, const std::function<void(int64_t)>& task) {
  const int64_t helpers = std::min<int64_t>(num_threads, n) - 1;
  if (helpers <= 0) {
    for (int64_t k = 0; k < n; ++k) task(k);
    return;
  }
  auto queue = std::make_shared<TaskQueue>();
  queue->task = task;
  queue->size = n;
  for (int64_t h = 0; h < helpers; ++h) {
    try {
      std::thread([queue] { queue->drain(); }).detach();
    } catch (const std::system_error&) {
      break;  // no more threads to be had: the caller and the helpers started so far cope
    }
  }
  queue->drain();
  std::unique_lock<std::mutex> lock(queue->mutex);
  queue->all_done.wait(lock, [&] { return queue->finished.load() == n; });
  if (queue->error) std::rethrow_exception(queue->error);
}

template <typename T>
void solve_lsa_batch(const T* cost, int64_t batch, int64_t rows, int64_t cols,
                     const int64_t* num_cols, int64_t* out, int num_threads) {
  if (batch < 0 || rows < 0 || cols < 0) throw std::invalid_argument("negative problem size");
  for (int64_t b = 0; num_cols != nullptr && b < batch; ++b) {
    if (num_cols[b] < 0 || num_cols[b] > cols) {
      throw std::invalid_argument("num_cols[" + std::to_string(b) + "] = " +
                                  std::to_string(num_cols[b]) + " is outside [0, " +
                                  std::to_string(cols) + "]");
    }
  }
  // A helper thread costs tens of microseconds to start: only worth it with enough work.
  constexpr int64_t kEntriesPerThread = 1 << 16;
  const int64_t useful_threads = 1 + batch * rows * cols / kEntriesPerThread;
  num_threads = static_cast<int>(std::min<int64_t>(num_threads, useful_threads));
  std::vector<LsaStatus> status(static_cast<size_t>(batch), LsaStatus::kOk);
  parallel_for_each(batch, num_threads, [&](int64_t b) {
    thread_local LsaWorkspace ws;
    const int64_t valid_cols = num_cols == nullptr ? cols : num_cols[b];
    status[b] = solve_lsa(cost + b * rows * cols, rows, valid_cols, cols, out + b * rows, ws);
  });
  for (int64_t b = 0; b < batch; ++b) {
    if (status[b] != LsaStatus::kOk) throw LsaError(b, status[b]);
  }
}

template LsaStatus solve_lsa<float>(const float*, int64_t, int64_t, int64_t, int64_t*, LsaWorkspace&);
template LsaStatus solve_lsa<double>(const double*, int64_t, int64_t, int64_t, int64_t*, LsaWorkspace&);
template void solve_lsa_batch<float>(const float*, int64_t, int64_t, int64_t, const int64_t*, int64_t*, int);
template void solve_lsa_batch<double>(const double*, int64_t, int64_t, int64_t, const int64_t*, int64_t*, int);

}  // namespace maskformer_fast
