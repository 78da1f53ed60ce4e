#pragma once
// Internal: row-major Eigen views over HostTensor storage for the reference math.

#include <Eigen/Core>

#include "instantid/tensor.hpp"

namespace instantid::ref::detail {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatrixMap = Eigen::Map<RowMatrix>;
using ConstMatrixMap = Eigen::Map<const RowMatrix>;
// A column block of a row-major matrix (one attention head): rows × cols with row stride `stride`.
using StridedMap = Eigen::Map<RowMatrix, 0, Eigen::OuterStride<>>;
using ConstStridedMap = Eigen::Map<const RowMatrix, 0, Eigen::OuterStride<>>;

// A tensor viewed as [numel / last, last].
inline ConstMatrixMap as_matrix(const HostTensor& t) {
  const Eigen::Index cols = t.ndim() == 0 ? 1 : t.size(t.ndim() - 1);
  return ConstMatrixMap(t.data(), cols == 0 ? 0 : t.numel() / cols, cols);
}
inline MatrixMap as_matrix(HostTensor& t) {
  const Eigen::Index cols = t.ndim() == 0 ? 1 : t.size(t.ndim() - 1);
  return MatrixMap(t.data(), cols == 0 ? 0 : t.numel() / cols, cols);
}

}  // namespace instantid::ref::detail
