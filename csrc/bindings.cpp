// pybind11 binding of the batched CPU assignment solver: maskformer_fast._C.linear_sum_assignment.
// Inputs are checked before any work; the solve runs with the GIL released on as many threads
// as torch.get_num_threads() allows. Bad inputs raise ValueError in Python (TORCH_CHECK_VALUE).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "hungarian.h"

namespace {

// cost: contiguous float32/float64 CPU [B, N, M]; num_cols: optional contiguous int64 CPU [B].
// Returns int64 [B, N]: the column matched to each row, or -1.
torch::Tensor linear_sum_assignment(const torch::Tensor& cost, const c10::optional<torch::Tensor>& num_cols) {
  TORCH_CHECK_VALUE(cost.device().is_cpu(), "cost must be a CPU tensor, got ", cost.device());
  TORCH_CHECK_VALUE(cost.dim() == 3, "cost must be [B, N, M], got shape ", cost.sizes());
  TORCH_CHECK_VALUE(cost.scalar_type() == at::kFloat || cost.scalar_type() == at::kDouble,
                    "cost must be float32 or float64, got ", cost.scalar_type());
  TORCH_CHECK_VALUE(cost.is_contiguous(), "cost must be contiguous");
  const int64_t batch = cost.size(0), rows = cost.size(1), cols = cost.size(2);
  const int64_t* num_cols_ptr = nullptr;
  if (num_cols.has_value()) {
    const torch::Tensor& nc = *num_cols;
    TORCH_CHECK_VALUE(nc.device().is_cpu(), "num_cols must be a CPU tensor, got ", nc.device());
    TORCH_CHECK_VALUE(nc.scalar_type() == at::kLong, "num_cols must be int64, got ", nc.scalar_type());
    TORCH_CHECK_VALUE(nc.dim() == 1 && nc.size(0) == batch, "num_cols must have shape [", batch,
                      "], got ", nc.sizes());
    TORCH_CHECK_VALUE(nc.is_contiguous(), "num_cols must be contiguous");
    num_cols_ptr = nc.data_ptr<int64_t>();
  }
  torch::Tensor out = torch::empty({batch, rows}, cost.options().dtype(at::kLong));
  try {
    pybind11::gil_scoped_release no_gil;
    AT_DISPATCH_FLOATING_TYPES(cost.scalar_type(), "linear_sum_assignment", [&] {
      maskformer_fast::solve_lsa_batch<scalar_t>(cost.data_ptr<scalar_t>(), batch, rows, cols, num_cols_ptr,
                                                 out.data_ptr<int64_t>(), at::get_num_threads());
    });
  } catch (const std::invalid_argument& e) {  // LsaError or a bad num_cols entry
    TORCH_CHECK_VALUE(false, e.what());
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Exact batched linear sum assignment (shortest augmenting path) on CPU";
  m.def("linear_sum_assignment", &linear_sum_assignment, pybind11::arg("cost"),
        pybind11::arg("num_cols") = pybind11::none(),
        "Solves cost[b, :, :num_cols[b]] for every b; returns int64 [B, N] (column per row or -1).");
}
