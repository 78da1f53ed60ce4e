// CUDA backend: cuDNN convolutions (Conv+Relu fused with cudnnConvolutionBiasActivationForward,
// other convs with cudnnConvolutionForward + a bias/clamp epilogue kernel), cuBLAS for Gemm/MatMul,
// small kernels (cuda_ops.cu) for the rest. Weights are uploaded once; for every distinct set of
// input shapes a Plan is built once (shapes, int64 shape subgraphs evaluated on the host, buffers,
// cuDNN algorithms) and then replayed: a run is H2D copy, the plan's launches, D2H copy, one sync.

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <list>
#include <map>

#include "instantid/error.hpp"
#include "onnx/cpu_ops.hpp"
#include "onnx/cuda_backend.hpp"
#include "onnx/cuda_ops.hpp"
#include "onnx/shape_rules.hpp"

namespace instantid::onnx {

namespace {

constexpr std::size_t kMaxPlans = 8;                        // SCRFD's 8 detection sizes
constexpr std::size_t kMaxWorkspace = std::size_t{1} << 30;  // per cuDNN algorithm

void check_cuda(cudaError_t e, const std::string& where, const char* what) {
  if (e != cudaSuccess) {
    throw Error(make_message(where, ": ", what, " failed: ", cudaGetErrorString(e)));
  }
}
void check_cudnn(cudnnStatus_t s, const std::string& where, const char* what) {
  if (s != CUDNN_STATUS_SUCCESS) {
    throw Error(make_message(where, ": ", what, " failed: ", cudnnGetErrorString(s)));
  }
}
void check_cublas(cublasStatus_t s, const std::string& where, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) {
    throw Error(make_message(where, ": ", what, " failed: ", cublasGetStatusString(s)));
  }
}
#define ONNX_CUDA(expr, where) check_cuda((expr), (where), #expr)
#define ONNX_CUDNN(expr, where) check_cudnn((expr), (where), #expr)
#define ONNX_CUBLAS(expr, where) check_cublas((expr), (where), #expr)

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(std::size_t bytes, const std::string& where) : bytes_(bytes) {
    if (bytes > 0) ONNX_CUDA(cudaMalloc(&ptr_, bytes), where);
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) {
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* get() const { return ptr_; }
  std::size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

std::int64_t count(const Shape& s) {
  std::int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

struct DevTensor {
  void* ptr = nullptr;  // contiguous, compute dtype
  Shape shape;
};

struct Value {
  enum class Kind : std::uint8_t { kNone, kHost, kDevice };
  Kind kind = Kind::kNone;
  Tensor host;
  DevTensor dev;
};

struct ConvDescriptors {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr, bias = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  cudnnActivationDescriptor_t act = nullptr;
  ~ConvDescriptors() {
    if (x) cudnnDestroyTensorDescriptor(x);
    if (y) cudnnDestroyTensorDescriptor(y);
    if (bias) cudnnDestroyTensorDescriptor(bias);
    if (w) cudnnDestroyFilterDescriptor(w);
    if (conv) cudnnDestroyConvolutionDescriptor(conv);
    if (act) cudnnDestroyActivationDescriptor(act);
  }
};

struct OutputSlot {
  bool on_device = false;
  Tensor host;            // when !on_device
  DevTensor dev;          // compute dtype
  void* staging = nullptr;  // f32 copy on the device (f16 mode)
};

struct Plan {
  std::vector<Shape> input_shapes;
  std::list<DeviceBuffer> buffers;
  std::vector<std::unique_ptr<ConvDescriptors>> descriptors;
  std::vector<std::function<void()>> steps;
  std::vector<DevTensor> inputs;
  std::vector<void*> input_staging;  // f32 device copies of the inputs (f16 mode)
  std::vector<OutputSlot> outputs;
  bool graph_tried = false;
  cudaGraphExec_t graph = nullptr;  // the steps, captured after the first run
  ~Plan() {
    if (graph != nullptr) cudaGraphExecDestroy(graph);
  }
  void* alloc(std::size_t bytes, const std::string& where) {
    buffers.emplace_back(std::max<std::size_t>(bytes, 16), where);
    return buffers.back().get();
  }
};

class CudaExecutor final : public CudaBackend {
 public:
  CudaExecutor(const Graph& graph, const ExecutorOptions& options)
      : graph_(graph),
        device_(options.device.index),
        half_(options.cuda_dtype == DType::kF16),
        use_graphs_(options.cuda_graph) {
    const std::string where = graph_.path + ": CUDA backend";
    int count = 0;
    ONNX_CUDA(cudaGetDeviceCount(&count), where);
    INSTANTID_CHECK(device_ >= 0 && device_ < count, where, ": device cuda:", device_,
                    " does not exist, expected an index in 0..", count - 1);
    ONNX_CUDA(cudaSetDevice(device_), where);
    ONNX_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), where);
    ONNX_CUDNN(cudnnCreate(&cudnn_), where);
    ONNX_CUDNN(cudnnSetStream(cudnn_, stream_), where);
    ONNX_CUBLAS(cublasCreate(&cublas_), where);
    ONNX_CUBLAS(cublasSetStream(cublas_, stream_), where);
    ONNX_CUBLAS(cublasSetMathMode(cublas_, half_ ? CUBLAS_DEFAULT_MATH : CUBLAS_PEDANTIC_MATH), where);
    consumers_.assign(graph_.value_names.size(), 0);
    for (const Node& n : graph_.nodes) {
      for (int v : n.inputs) {
        if (v >= 0) ++consumers_[static_cast<std::size_t>(v)];
      }
    }
    for (int v : graph_.output_ids) ++consumers_[static_cast<std::size_t>(v)];
    // Upload every float initializer once, in the compute dtype.
    for (const auto& [id, t] : graph_.initializers) {
      if (t.type == ElemType::kFloat) upload_weight(id, t);
    }
  }

  ~CudaExecutor() override {
    plans_.clear();
    weights_.clear();
    workspace_ = DeviceBuffer();
    if (cublas_) cublasDestroy(cublas_);
    if (cudnn_) cudnnDestroy(cudnn_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  std::vector<HostTensor> run(const std::vector<HostTensor>& inputs) override {
    const std::string where = graph_.path + ": CUDA run";
    ONNX_CUDA(cudaSetDevice(device_), where);
    Plan& plan = plan_for(inputs);
    for (std::size_t k = 0; k < inputs.size(); ++k) {
      const std::size_t bytes = static_cast<std::size_t>(inputs[k].numel()) * 4;
      if (half_) {
        ONNX_CUDA(cudaMemcpyAsync(plan.input_staging[k], inputs[k].data(), bytes,
                                  cudaMemcpyHostToDevice, stream_), where);
        ONNX_CUDA(cuda::launch_cast(inputs[k].numel(), static_cast<const float*>(plan.input_staging[k]),
                                    static_cast<__half*>(plan.inputs[k].ptr), stream_), where);
      } else {
        ONNX_CUDA(cudaMemcpyAsync(plan.inputs[k].ptr, inputs[k].data(), bytes,
                                  cudaMemcpyHostToDevice, stream_), where);
      }
    }
    if (plan.graph != nullptr) {
      ONNX_CUDA(cudaGraphLaunch(plan.graph, stream_), where);
    } else {
      for (auto& step : plan.steps) step();
      if (use_graphs_ && !plan.graph_tried) capture(plan);
    }
    std::vector<HostTensor> result;
    for (OutputSlot& slot : plan.outputs) {
      if (!slot.on_device) {
        const Tensor& t = slot.host;
        result.emplace_back(t.shape, t.type == ElemType::kFloat
                                         ? t.f
                                         : std::vector<float>(t.i.begin(), t.i.end()));
        continue;
      }
      HostTensor out(slot.dev.shape);
      const void* src = slot.dev.ptr;
      if (half_) {
        ONNX_CUDA(cuda::launch_cast(out.numel(), static_cast<const __half*>(slot.dev.ptr),
                                    static_cast<float*>(slot.staging), stream_), where);
        src = slot.staging;
      }
      ONNX_CUDA(cudaMemcpyAsync(out.data(), src, static_cast<std::size_t>(out.numel()) * 4,
                                cudaMemcpyDeviceToHost, stream_), where);
      result.push_back(std::move(out));
    }
    ONNX_CUDA(cudaStreamSynchronize(stream_), where);
    return result;
  }

 private:
  // Records the plan's launches into a CUDA graph (nothing executes during capture). Any failure
  // leaves the plan on plain launches.
  void capture(Plan& plan) {
    plan.graph_tried = true;
    if (cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
      cudaGetLastError();
      return;
    }
    bool ok = true;
    try {
      for (auto& step : plan.steps) step();
    } catch (const Error&) {
      ok = false;
    }
    cudaGraph_t graph = nullptr;
    ok = cudaStreamEndCapture(stream_, &graph) == cudaSuccess && ok && graph != nullptr;
    if (ok) ok = cudaGraphInstantiate(&plan.graph, graph, 0) == cudaSuccess;
    if (graph != nullptr) cudaGraphDestroy(graph);
    if (!ok) {
      plan.graph = nullptr;
      cudaGetLastError();
    }
  }

  std::size_t elem_bytes() const { return half_ ? 2 : 4; }
  cudnnDataType_t cudnn_type() const { return half_ ? CUDNN_DATA_HALF : CUDNN_DATA_FLOAT; }

  void upload_weight(int id, const Tensor& t) {
    const std::string where = make_message(graph_.path, ": uploading '",
                                           graph_.value_names[static_cast<std::size_t>(id)], "'");
    DeviceBuffer buf(static_cast<std::size_t>(t.numel()) * elem_bytes(), where);
    upload(buf.get(), t.f, where);
    weights_.emplace(id, std::move(buf));
  }

  // Host float values → device buffer in the compute dtype (synchronous; plan/load time only).
  void upload(void* dst, const std::vector<float>& values, const std::string& where) {
    if (values.empty()) return;
    if (half_) {
      std::vector<__half> h(values.size());
      for (std::size_t i = 0; i < values.size(); ++i) h[i] = __float2half_rn(values[i]);
      ONNX_CUDA(cudaMemcpy(dst, h.data(), h.size() * 2, cudaMemcpyHostToDevice), where);
    } else {
      ONNX_CUDA(cudaMemcpy(dst, values.data(), values.size() * 4, cudaMemcpyHostToDevice), where);
    }
  }

  const float* upload_f32(Plan& plan, const std::vector<float>& values, const std::string& where) {
    void* p = plan.alloc(values.size() * 4, where);
    ONNX_CUDA(cudaMemcpy(p, values.data(), values.size() * 4, cudaMemcpyHostToDevice), where);
    return static_cast<const float*>(p);
  }

  Plan& plan_for(const std::vector<HostTensor>& inputs) {
    std::vector<Shape> shapes;
    for (const auto& t : inputs) shapes.push_back(t.shape());
    for (auto it = plans_.begin(); it != plans_.end(); ++it) {
      if ((*it)->input_shapes == shapes) {
        plans_.splice(plans_.begin(), plans_, it);  // most recently used first
        return *plans_.front();
      }
    }
    auto plan = make_plan(shapes);
    plans_.push_front(std::move(plan));
    if (plans_.size() > kMaxPlans) plans_.pop_back();
    return *plans_.front();
  }

  // A device copy of a value (uploading host constants into the plan).
  DevTensor device_of(Plan& plan, std::vector<Value>& values, int id, const Node& node) {
    Value& v = values[static_cast<std::size_t>(id)];
    if (v.kind == Value::Kind::kDevice) return v.dev;
    INSTANTID_CHECK(v.kind == Value::Kind::kHost, node.where(), ": input '",
                    graph_.value_names[static_cast<std::size_t>(id)], "' is not available");
    INSTANTID_CHECK(v.host.type == ElemType::kFloat, node.where(), ": input '",
                    graph_.value_names[static_cast<std::size_t>(id)],
                    "' is int64 where the CUDA backend expects float");
    auto w = weights_.find(id);
    if (w != weights_.end()) return DevTensor{w->second.get(), v.host.shape};
    void* p = plan.alloc(static_cast<std::size_t>(v.host.numel()) * elem_bytes(), node.where());
    upload(p, v.host.f, node.where());
    v.kind = Value::Kind::kDevice;
    v.dev = DevTensor{p, v.host.shape};
    return v.dev;
  }

  DevTensor new_device(Plan& plan, const Shape& shape, const Node& node) {
    return DevTensor{plan.alloc(static_cast<std::size_t>(count(shape)) * elem_bytes(), node.where()),
                     shape};
  }

  // Growing the workspace frees the old buffer, whose address earlier plans' CUDA graphs hold:
  // those graphs are dropped and captured again on their next run.
  void ensure_workspace(std::size_t bytes, const std::string& where) {
    if (bytes <= workspace_.bytes()) return;
    ONNX_CUDA(cudaStreamSynchronize(stream_), where);
    for (auto& plan : plans_) {
      if (plan->graph != nullptr) cudaGraphExecDestroy(plan->graph);
      plan->graph = nullptr;
      plan->graph_tried = false;
    }
    workspace_ = DeviceBuffer(bytes, where);
  }

  cuda::BroadcastParams broadcast_params(const Node& node, const Shape& out, const Shape& a,
                                         const Shape& b) {
    cuda::BroadcastParams p;
    p.n = count(out);
    if (a == out && b == out) {
      p.rank = 1;
      p.out_shape[0] = p.n;
      p.a_stride[0] = p.b_stride[0] = 1;
      return p;
    }
    INSTANTID_CHECK(out.size() <= static_cast<std::size_t>(cuda::kMaxDims), node.where(),
                    ": rank ", out.size(), " exceeds the CUDA backend's limit of ", cuda::kMaxDims);
    p.rank = static_cast<int>(out.size());
    std::int64_t sa = 1, sb = 1;
    for (std::size_t i = out.size(); i-- > 0;) {
      p.out_shape[i] = out[i];
      const std::size_t ia = i + a.size(), ib = i + b.size();
      if (ia >= out.size()) {
        const std::int64_t d = a[ia - out.size()];
        p.a_stride[i] = d == 1 ? 0 : sa;
        sa *= d;
      }
      if (ib >= out.size()) {
        const std::int64_t d = b[ib - out.size()];
        p.b_stride[i] = d == 1 ? 0 : sb;
        sb *= d;
      }
    }
    return p;
  }

  std::unique_ptr<Plan> make_plan(const std::vector<Shape>& shapes);
  void plan_conv(Plan& plan, std::vector<Value>& values, std::size_t index, bool* skip_next_relu);
  void plan_gemm(Plan& plan, std::vector<Value>& values, const Node& node);

  const Graph& graph_;
  int device_ = 0;
  bool half_ = false;
  bool use_graphs_ = true;
  cudaStream_t stream_ = nullptr;
  cudnnHandle_t cudnn_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  std::vector<int> consumers_;
  std::map<int, DeviceBuffer> weights_;
  DeviceBuffer workspace_;
  std::list<std::unique_ptr<Plan>> plans_;
};

void CudaExecutor::plan_conv(Plan& plan, std::vector<Value>& values, std::size_t index,
                             bool* fused_relu) {
  const Node& node = graph_.nodes[index];
  const std::string where = graph_.path + ": " + node.where();
  const DevTensor x = device_of(plan, values, node.inputs[0], node);
  const Value& wv = values[static_cast<std::size_t>(node.inputs[1])];
  INSTANTID_CHECK(wv.kind == Value::Kind::kHost || wv.kind == Value::Kind::kDevice, where,
                  ": weight is not available");
  const DevTensor w = device_of(plan, values, node.inputs[1], node);
  const Conv2dGeometry g = conv_geometry(node, x.shape, w.shape);
  INSTANTID_CHECK(g.pad_top == g.pad_bottom && g.pad_left == g.pad_right, where,
                  ": asymmetric pads ", shape_string(node.attr_ints("pads")),
                  " are not supported by the CUDA backend (cuDNN); expected begin == end");
  // Bias in f32 for the epilogue kernel; in the compute dtype for the fused cuDNN call.
  std::vector<float> bias(static_cast<std::size_t>(g.m), 0.0f);
  const bool has_bias = node.inputs.size() > 2 && node.inputs[2] >= 0;
  if (has_bias) {
    const Value& bv = values[static_cast<std::size_t>(node.inputs[2])];
    INSTANTID_CHECK(bv.kind == Value::Kind::kHost && bv.host.type == ElemType::kFloat &&
                        bv.host.numel() == g.m,
                    where, ": bias must be a constant float [", g.m, "] tensor on the CUDA backend");
    bias = bv.host.f;
  }
  // Fuse a following Relu when it is the only reader of the conv output.
  const int y_id = node.outputs[0];
  const Node* next = index + 1 < graph_.nodes.size() ? &graph_.nodes[index + 1] : nullptr;
  const bool relu = next != nullptr && next->op == Op::kRelu && next->inputs[0] == y_id &&
                    consumers_[static_cast<std::size_t>(y_id)] == 1;
  float lo = -std::numeric_limits<float>::infinity(), hi = std::numeric_limits<float>::infinity();
  if (relu) lo = 0.0f;

  auto d = std::make_unique<ConvDescriptors>();
  const std::string cw = where + ": cuDNN setup";
  ONNX_CUDNN(cudnnCreateTensorDescriptor(&d->x), cw);
  ONNX_CUDNN(cudnnCreateTensorDescriptor(&d->y), cw);
  ONNX_CUDNN(cudnnCreateTensorDescriptor(&d->bias), cw);
  ONNX_CUDNN(cudnnCreateFilterDescriptor(&d->w), cw);
  ONNX_CUDNN(cudnnCreateConvolutionDescriptor(&d->conv), cw);
  ONNX_CUDNN(cudnnCreateActivationDescriptor(&d->act), cw);
  auto i32 = [](std::int64_t v) { return static_cast<int>(v); };
  ONNX_CUDNN(cudnnSetTensor4dDescriptor(d->x, CUDNN_TENSOR_NCHW, cudnn_type(), i32(g.n), i32(g.c),
                                        i32(g.h), i32(g.w)), cw);
  ONNX_CUDNN(cudnnSetTensor4dDescriptor(d->y, CUDNN_TENSOR_NCHW, cudnn_type(), i32(g.n), i32(g.m),
                                        i32(g.oh), i32(g.ow)), cw);
  ONNX_CUDNN(cudnnSetTensor4dDescriptor(d->bias, CUDNN_TENSOR_NCHW, cudnn_type(), 1, i32(g.m), 1, 1),
             cw);
  ONNX_CUDNN(cudnnSetFilter4dDescriptor(d->w, cudnn_type(), CUDNN_TENSOR_NCHW, i32(g.m),
                                        i32(g.c / g.group), i32(g.kh), i32(g.kw)), cw);
  ONNX_CUDNN(cudnnSetConvolution2dDescriptor(d->conv, i32(g.pad_top), i32(g.pad_left), i32(g.sh),
                                             i32(g.sw), i32(g.dh), i32(g.dw),
                                             CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT), cw);
  ONNX_CUDNN(cudnnSetConvolutionGroupCount(d->conv, i32(g.group)), cw);
  // f32: true fp32 math (no TF32) so the backend matches the CPU reference; f16: tensor cores.
  ONNX_CUDNN(cudnnSetConvolutionMathType(d->conv, half_ ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH), cw);
  ONNX_CUDNN(cudnnSetActivationDescriptor(d->act, CUDNN_ACTIVATION_RELU, CUDNN_NOT_PROPAGATE_NAN, 0.0),
             cw);
  int n_out = 0, c_out = 0, h_out = 0, w_out = 0;
  ONNX_CUDNN(cudnnGetConvolution2dForwardOutputDim(d->conv, d->x, d->w, &n_out, &c_out, &h_out, &w_out),
             cw);
  INSTANTID_CHECK(h_out == g.oh && w_out == g.ow && c_out == g.m, where,
                  ": cuDNN output dims disagree with ONNX: got ", h_out, "x", w_out, ", expected ",
                  g.oh, "x", g.ow);

  cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  int returned = 0;
  ONNX_CUDNN(cudnnFindConvolutionForwardAlgorithm(cudnn_, d->x, d->w, d->conv, d->y,
                                                  CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &returned, perf),
             where);
  int pick = -1;
  for (int k = 0; k < returned; ++k) {
    const bool exact_fp32 = perf[k].mathType == CUDNN_FMA_MATH;  // no TF32 in f32 mode
    if (perf[k].status == CUDNN_STATUS_SUCCESS && perf[k].memory <= kMaxWorkspace &&
        (half_ || exact_fp32)) {
      pick = k;
      break;
    }
  }
  INSTANTID_CHECK(pick >= 0, where, ": cuDNN found no forward algorithm for input ",
                  shape_string(x.shape), " and weight ", shape_string(w.shape));
  // The algorithm was timed under the math type cuDNN reports with it; calling it under another
  // one can fail with CUDNN_STATUS_BAD_PARAM.
  ONNX_CUDNN(cudnnSetConvolutionMathType(d->conv, perf[pick].mathType), cw);
  const cudnnConvolutionFwdAlgo_t algo = perf[pick].algo;
  const std::size_t ws_bytes = perf[pick].memory;
  ensure_workspace(ws_bytes, where);

  const DevTensor y = new_device(plan, {g.n, g.m, g.oh, g.ow}, node);
  const float* bias_f32 = has_bias ? upload_f32(plan, bias, where) : nullptr;
  void* bias_dev = plan.alloc(static_cast<std::size_t>(g.m) * elem_bytes(), where);
  upload(bias_dev, bias, where);

  ConvDescriptors* desc = d.get();
  plan.descriptors.push_back(std::move(d));
  bool fused = false;
  if (relu) {
    // Dry run at plan time: keep the fused call only if cuDNN accepts this configuration.
    const float one = 1.0f, zero = 0.0f;
    fused = cudnnConvolutionBiasActivationForward(
                cudnn_, &one, desc->x, x.ptr, desc->w, w.ptr, desc->conv, algo, workspace_.get(),
                ws_bytes, &zero, desc->y, y.ptr, desc->bias, bias_dev, desc->act, desc->y,
                y.ptr) == CUDNN_STATUS_SUCCESS;
    ONNX_CUDA(cudaStreamSynchronize(stream_), where);
  }
  if (fused) {
    plan.steps.push_back([this, desc, x, w, y, algo, ws_bytes, bias_dev, where] {
      const float one = 1.0f, zero = 0.0f;
      ONNX_CUDNN(cudnnConvolutionBiasActivationForward(
                     cudnn_, &one, desc->x, x.ptr, desc->w, w.ptr, desc->conv, algo,
                     workspace_.get(), ws_bytes, &zero, desc->y, y.ptr, desc->bias, bias_dev,
                     desc->act, desc->y, y.ptr),
                 where);
    });
  } else {
    const std::int64_t n = g.n, m = g.m, inner = g.oh * g.ow;
    const bool epilogue = has_bias || relu;
    plan.steps.push_back([this, desc, x, w, y, algo, ws_bytes, bias_f32, lo, hi, n, m, inner,
                          epilogue, where] {
      const float one = 1.0f, zero = 0.0f;
      ONNX_CUDNN(cudnnConvolutionForward(cudnn_, &one, desc->x, x.ptr, desc->w, w.ptr, desc->conv,
                                         algo, workspace_.get(), ws_bytes, &zero, desc->y, y.ptr),
                 where);
      if (!epilogue) return;
      cudaError_t e;
      if (half_) {
        e = cuda::launch_channel_affine(n, m, inner, nullptr, bias_f32, lo, hi,
                                        static_cast<const __half*>(y.ptr), static_cast<__half*>(y.ptr),
                                        stream_);
      } else {
        e = cuda::launch_channel_affine(n, m, inner, nullptr, bias_f32, lo, hi,
                                        static_cast<const float*>(y.ptr), static_cast<float*>(y.ptr),
                                        stream_);
      }
      ONNX_CUDA(e, where);
    });
  }
  Value& out = values[static_cast<std::size_t>(y_id)];
  out.kind = Value::Kind::kDevice;
  out.dev = y;
  *fused_relu = relu;
}

void CudaExecutor::plan_gemm(Plan& plan, std::vector<Value>& values, const Node& node) {
  const std::string where = graph_.path + ": " + node.where();
  const DevTensor a = device_of(plan, values, node.inputs[0], node);
  const DevTensor b = device_of(plan, values, node.inputs[1], node);
  bool ta = false, tb = false;
  float alpha = 1.0f, beta = 0.0f;
  std::int64_t batch = 1;
  Shape out;
  std::int64_t m = 0, k = 0, n = 0;
  if (node.op == Op::kGemm) {
    INSTANTID_CHECK(a.shape.size() == 2 && b.shape.size() == 2, where, ": A ",
                    shape_string(a.shape), " and B ", shape_string(b.shape), " must have rank 2");
    ta = node.attr_int("transA", 0) != 0;
    tb = node.attr_int("transB", 0) != 0;
    alpha = node.attr_float("alpha", 1.0f);
    m = ta ? a.shape[1] : a.shape[0];
    k = ta ? a.shape[0] : a.shape[1];
    n = tb ? b.shape[0] : b.shape[1];
    INSTANTID_CHECK(k == (tb ? b.shape[1] : b.shape[0]), where, ": inner dimensions differ: A ",
                    shape_string(a.shape), ", B ", shape_string(b.shape));
    out = {m, n};
  } else {
    // MatMul: A [..., M, K] x B [K, N] (batch folded into M), or equal batch dims.
    INSTANTID_CHECK(a.shape.size() >= 2 && b.shape.size() >= 2, where,
                    ": the CUDA backend supports MatMul of rank >= 2 inputs, got ",
                    shape_string(a.shape), " x ", shape_string(b.shape));
    k = a.shape.back();
    n = b.shape.back();
    INSTANTID_CHECK(k == b.shape[b.shape.size() - 2], where, ": inner dimensions differ: ",
                    shape_string(a.shape), " x ", shape_string(b.shape));
    out = a.shape;
    out.back() = n;
    if (b.shape.size() == 2) {
      m = count(a.shape) / k;
    } else {
      INSTANTID_CHECK(Shape(a.shape.begin(), a.shape.end() - 2) == Shape(b.shape.begin(), b.shape.end() - 2),
                      where, ": the CUDA backend supports MatMul with equal batch dims or a 2-D B, got ",
                      shape_string(a.shape), " x ", shape_string(b.shape));
      m = a.shape[a.shape.size() - 2];
      batch = count(a.shape) / (m * k);
    }
  }
  const DevTensor y = new_device(plan, out, node);
  if (node.op == Op::kGemm && node.inputs.size() > 2 && node.inputs[2] >= 0) {
    const DevTensor c = device_of(plan, values, node.inputs[2], node);
    const Shape bs = broadcast_shape(node, out, c.shape);
    INSTANTID_CHECK(bs == out, where, ": C ", shape_string(c.shape), " must broadcast to ",
                    shape_string(out));
    beta = node.attr_float("beta", 1.0f);
    const cuda::BroadcastParams p = broadcast_params(node, out, out, c.shape);
    plan.steps.push_back([this, p, c, y, where] {
      const cudaError_t e =
          half_ ? cuda::launch_binary(cuda::BinaryOp::kCopyB, p, static_cast<const __half*>(nullptr),
                                      static_cast<const __half*>(c.ptr), static_cast<__half*>(y.ptr), stream_)
                : cuda::launch_binary(cuda::BinaryOp::kCopyB, p, static_cast<const float*>(nullptr),
                                      static_cast<const float*>(c.ptr), static_cast<float*>(y.ptr), stream_);
      ONNX_CUDA(e, where);
    });
  }
  // Row-major Y[M,N] = op(A) op(B)  ⇔  column-major Y^T = op(B)^T op(A)^T.
  const cudaDataType_t dt = half_ ? CUDA_R_16F : CUDA_R_32F;
  const int lda = static_cast<int>(ta ? m : k), ldb = static_cast<int>(tb ? k : n);
  const long long stride_a = m * k, stride_b = b.shape.size() == 2 ? 0 : k * n, stride_y = m * n;
  const int im = static_cast<int>(m), in = static_cast<int>(n), ik = static_cast<int>(k);
  const int ibatch = static_cast<int>(batch);
  plan.steps.push_back([this, a, b, y, ta, tb, alpha, beta, dt, lda, ldb, stride_a, stride_b,
                        stride_y, im, in, ik, ibatch, where] {
    ONNX_CUBLAS(cublasGemmStridedBatchedEx(cublas_, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                           ta ? CUBLAS_OP_T : CUBLAS_OP_N, in, im, ik, &alpha,
                                           b.ptr, dt, ldb, stride_b, a.ptr, dt, lda, stride_a,
                                           &beta, y.ptr, dt, in, stride_y, ibatch,
                                           CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                where);
  });
  Value& v = values[static_cast<std::size_t>(node.outputs[0])];
  v.kind = Value::Kind::kDevice;
  v.dev = y;
}

std::unique_ptr<Plan> CudaExecutor::make_plan(const std::vector<Shape>& shapes) {
  auto plan = std::make_unique<Plan>();
  plan->input_shapes = shapes;
  std::vector<Value> values(graph_.value_names.size());
  for (const auto& [id, t] : graph_.initializers) {
    Value& v = values[static_cast<std::size_t>(id)];
    v.kind = Value::Kind::kHost;
    v.host = t;
  }
  for (std::size_t k = 0; k < shapes.size(); ++k) {
    const std::string where = graph_.path + ": input '" + graph_.inputs[k].name + "'";
    Value& v = values[static_cast<std::size_t>(graph_.input_ids[k])];
    v.kind = Value::Kind::kDevice;
    v.dev = DevTensor{plan->alloc(static_cast<std::size_t>(count(shapes[k])) * elem_bytes(), where),
                      shapes[k]};
    plan->inputs.push_back(v.dev);
    plan->input_staging.push_back(half_ ? plan->alloc(static_cast<std::size_t>(count(shapes[k])) * 4, where)
                                        : nullptr);
  }
  bool skip_relu = false;
  for (std::size_t index = 0; index < graph_.nodes.size(); ++index) {
    const Node& node = graph_.nodes[index];
    const std::string where = graph_.path + ": " + node.where();
    if (skip_relu) {  // fused into the previous Conv: alias its output
      skip_relu = false;
      values[static_cast<std::size_t>(node.outputs[0])] =
          values[static_cast<std::size_t>(node.inputs[0])];
      continue;
    }
    bool any_device = false;
    for (int id : node.inputs) {
      if (id < 0) continue;
      const Value& v = values[static_cast<std::size_t>(id)];
      INSTANTID_CHECK(v.kind != Value::Kind::kNone, where, ": input '",
                      graph_.value_names[static_cast<std::size_t>(id)], "' is not available");
      any_device = any_device || v.kind == Value::Kind::kDevice;
    }
    Value& out = values[static_cast<std::size_t>(node.outputs[0])];
    try {
      if (!any_device) {
        // Everything is known on the host (shape subgraphs, constants): evaluate it now.
        std::vector<const Tensor*> in;
        for (int id : node.inputs) in.push_back(id < 0 ? nullptr : &values[static_cast<std::size_t>(id)].host);
        auto outs = run_cpu_node(node, graph_.opset, in);
        for (std::size_t k = 0; k < node.outputs.size(); ++k) {
          if (node.outputs[k] < 0) continue;
          Value& o = values[static_cast<std::size_t>(node.outputs[k])];
          o.kind = Value::Kind::kHost;
          o.host = std::move(outs[k]);
        }
        continue;
      }
      const Value& x0 = values[static_cast<std::size_t>(node.inputs.empty() ? -1 : node.inputs[0])];
      auto host_input = [&](std::size_t k) -> const Tensor* {
        if (k >= node.inputs.size() || node.inputs[k] < 0) return nullptr;
        const Value& v = values[static_cast<std::size_t>(node.inputs[k])];
        INSTANTID_CHECK(v.kind == Value::Kind::kHost, where, ": input ", k,
                        " must be a constant or computed from shapes on the CUDA backend");
        return &v.host;
      };
      switch (node.op) {
        case Op::kConv: plan_conv(*plan, values, index, &skip_relu); break;
        case Op::kShape: {
          const Shape& s = x0.dev.shape;
          const std::int64_t rank = static_cast<std::int64_t>(s.size());
          std::int64_t start = node.attr_int("start", 0), end = node.attr_int("end", rank);
          if (start < 0) start += rank;
          if (end < 0) end += rank;
          start = std::clamp<std::int64_t>(start, 0, rank);
          end = std::clamp<std::int64_t>(end, start, rank);
          out.kind = Value::Kind::kHost;
          out.host = Tensor::ints({end - start}, Shape(s.begin() + start, s.begin() + end));
          break;
        }
        case Op::kReshape:
        case Op::kFlatten:
        case Op::kSqueeze:
        case Op::kUnsqueeze:
        case Op::kIdentity:
        case Op::kDropout: {
          const DevTensor x = device_of(*plan, values, node.inputs[0], node);
          Shape s;
          if (node.op == Op::kReshape) {
            s = reshape_shape(node, x.shape, *host_input(1));
          } else if (node.op == Op::kFlatten) {
            s = flatten_shape(node, x.shape);
          } else if (node.op == Op::kUnsqueeze) {
            s = unsqueeze_shape(node, x.shape,
                                node.has("axes") ? node.attr_ints("axes")
                                                 : as_int_list(node, *host_input(1), "axes"));
          } else if (node.op == Op::kSqueeze) {
            const Tensor* axes = host_input(1);
            s = squeeze_shape(node, x.shape,
                              node.has("axes") ? node.attr_ints("axes")
                              : axes           ? as_int_list(node, *axes, "axes")
                                               : std::vector<std::int64_t>{},
                              node.has("axes") || axes != nullptr);
          } else {
            s = x.shape;
          }
          out.kind = Value::Kind::kDevice;
          out.dev = DevTensor{x.ptr, s};  // a view: same buffer
          break;
        }
        case Op::kRelu:
        case Op::kSigmoid:
        case Op::kClip: {
          const DevTensor x = device_of(*plan, values, node.inputs[0], node);
          float lo = node.op == Op::kRelu ? 0.0f : -std::numeric_limits<float>::infinity();
          float hi = std::numeric_limits<float>::infinity();
          if (node.op == Op::kClip) {
            if (graph_.opset < 11) {
              lo = node.attr_float("min", lo);
              hi = node.attr_float("max", hi);
            } else {
              if (const Tensor* t = host_input(1)) lo = t->f.at(0);
              if (const Tensor* t = host_input(2)) hi = t->f.at(0);
            }
          }
          const DevTensor y = new_device(*plan, x.shape, node);
          const cuda::UnaryOp op = node.op == Op::kSigmoid ? cuda::UnaryOp::kSigmoid : cuda::UnaryOp::kClamp;
          const std::int64_t n = count(x.shape);
          plan->steps.push_back([this, op, n, lo, hi, x, y, where] {
            const cudaError_t e =
                half_ ? cuda::launch_unary(op, n, lo, hi, static_cast<const __half*>(x.ptr), static_cast<__half*>(y.ptr), stream_)
                      : cuda::launch_unary(op, n, lo, hi, static_cast<const float*>(x.ptr), static_cast<float*>(y.ptr), stream_);
            ONNX_CUDA(e, where);
          });
          out.kind = Value::Kind::kDevice;
          out.dev = y;
          break;
        }
        case Op::kAdd:
        case Op::kSub:
        case Op::kMul:
        case Op::kDiv:
        case Op::kPRelu: {
          const DevTensor a = device_of(*plan, values, node.inputs[0], node);
          const DevTensor b = device_of(*plan, values, node.inputs[1], node);
          const Shape s = broadcast_shape(node, a.shape, b.shape);
          if (node.op == Op::kPRelu) {
            INSTANTID_CHECK(s == a.shape, where, ": slope ", shape_string(b.shape),
                            " must broadcast to the input ", shape_string(a.shape));
          }
          const cuda::BroadcastParams p = broadcast_params(node, s, a.shape, b.shape);
          const cuda::BinaryOp op = node.op == Op::kAdd   ? cuda::BinaryOp::kAdd
                                    : node.op == Op::kSub ? cuda::BinaryOp::kSub
                                    : node.op == Op::kMul ? cuda::BinaryOp::kMul
                                    : node.op == Op::kDiv ? cuda::BinaryOp::kDiv
                                                          : cuda::BinaryOp::kPRelu;
          const DevTensor y = new_device(*plan, s, node);
          plan->steps.push_back([this, op, p, a, b, y, where] {
            const cudaError_t e =
                half_ ? cuda::launch_binary(op, p, static_cast<const __half*>(a.ptr), static_cast<const __half*>(b.ptr),
                                            static_cast<__half*>(y.ptr), stream_)
                      : cuda::launch_binary(op, p, static_cast<const float*>(a.ptr), static_cast<const float*>(b.ptr),
                                            static_cast<float*>(y.ptr), stream_);
            ONNX_CUDA(e, where);
          });
          out.kind = Value::Kind::kDevice;
          out.dev = y;
          break;
        }
        case Op::kBatchNorm: {
          const DevTensor x = device_of(*plan, values, node.inputs[0], node);
          INSTANTID_CHECK(x.shape.size() >= 2, where, ": input has shape ", shape_string(x.shape),
                          ", expected rank >= 2");
          const std::int64_t c = x.shape[1];
          const Tensor* sc = host_input(1);
          const Tensor* bi = host_input(2);
          const Tensor* mean = host_input(3);
          const Tensor* var = host_input(4);
          for (const Tensor* t : {sc, bi, mean, var}) {
            INSTANTID_CHECK(t != nullptr && t->type == ElemType::kFloat && t->numel() == c, where,
                            ": parameters must be float [", c, "]");
          }
          const float eps = node.attr_float("epsilon", 1e-5f);
          std::vector<float> a(static_cast<std::size_t>(c)), b(static_cast<std::size_t>(c));
          for (std::size_t k = 0; k < a.size(); ++k) {
            a[k] = sc->f[k] / std::sqrt(var->f[k] + eps);
            b[k] = bi->f[k] - mean->f[k] * a[k];
          }
          const float* ad = upload_f32(*plan, a, where);
          const float* bd = upload_f32(*plan, b, where);
          const std::int64_t n = x.shape[0], inner = count(x.shape) / std::max<std::int64_t>(1, n * c);
          const DevTensor y = new_device(*plan, x.shape, node);
          const float inf = std::numeric_limits<float>::infinity();
          plan->steps.push_back([this, n, c, inner, ad, bd, inf, x, y, where] {
            const cudaError_t e =
                half_ ? cuda::launch_channel_affine(n, c, inner, ad, bd, -inf, inf, static_cast<const __half*>(x.ptr),
                                                    static_cast<__half*>(y.ptr), stream_)
                      : cuda::launch_channel_affine(n, c, inner, ad, bd, -inf, inf, static_cast<const float*>(x.ptr),
                                                    static_cast<float*>(y.ptr), stream_);
            ONNX_CUDA(e, where);
          });
          out.kind = Value::Kind::kDevice;
          out.dev = y;
          break;
        }
        case Op::kMaxPool:
        case Op::kAveragePool: {
          const DevTensor x = device_of(*plan, values, node.inputs[0], node);
          const Pool2dGeometry g = pool_geometry(node, x.shape);
          cuda::Pool2dParams p{g.n * g.c, g.h, g.w, g.oh, g.ow, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw,
                               g.pad_top, g.pad_left, g.pad_bottom, g.pad_right,
                               node.op == Op::kMaxPool, g.count_include_pad};
          const DevTensor y = new_device(*plan, {g.n, g.c, g.oh, g.ow}, node);
          plan->steps.push_back([this, p, x, y, where] {
            const cudaError_t e =
                half_ ? cuda::launch_pool2d(p, static_cast<const __half*>(x.ptr), static_cast<__half*>(y.ptr), stream_)
                      : cuda::launch_pool2d(p, static_cast<const float*>(x.ptr), static_cast<float*>(y.ptr), stream_);
            ONNX_CUDA(e, where);
          });
          out.kind = Value::Kind::kDevice;
          out.dev = y;
          break;
        }
        case Op::kGlobalAveragePool: {
          const DevTensor x = device_of(*plan, values, node.inputs[0], node);
          INSTANTID_CHECK(x.shape.size() >= 3, where, ": input has shape ", shape_string(x.shape),
                          ", expected rank >= 3");
          Shape s = {x.shape[0], x.shape[1]};
          for (std::size_t d = 2; d < x.shape.size(); ++d) s.push_back(1);
          const std::int64_t nc = x.shape[0] * x.shape[1], inner = count(x.shape) / std::max<std::int64_t>(1, nc);
          const DevTensor y = new_device(*plan, s, node);
          plan->steps.push_back([this, nc, inner, x, y, where] {
            const cudaError_t e =
                half_ ? cuda::launch_global_average_pool(nc, inner, static_cast<const __half*>(x.ptr),
                                                         static_cast<__half*>(y.ptr), stream_)
                      : cuda::launch_global_average_pool(nc, inner, static_cast<const float*>(x.ptr),
                                                         static_cast<float*>(y.ptr), stream_);
            ONNX_CUDA(e, where);
          });
          out.kind = Value::Kind::kDevice;
          out.dev = y;
          break;
        }
        case Op::kResize:
        case Op::kUpsample: {
          const DevTensor x = device_of(*plan, values, node.inputs[0], node);
          const bool old_style = node.op == Op::kUpsample || graph_.opset < 11;
          const ResizePlan rp = resize_plan(node, graph_.opset, x.shape,
                                            old_style ? host_input(1) : host_input(2),
                                            old_style ? nullptr : host_input(3));
          INSTANTID_CHECK(x.shape.size() >= 1 && x.shape.size() <= 4, where, ": rank ",
                          x.shape.size(), " is not supported, expected 1..4");
          cuda::ResizeParams p{};
          const std::size_t pad = 4 - x.shape.size();
          for (std::size_t d = 0; d < 4; ++d) {
            p.in[d] = d < pad ? 1 : x.shape[d - pad];
            p.out[d] = d < pad ? 1 : rp.out[d - pad];
            p.scale[d] = d < pad ? 1.0f : rp.scales[d - pad];
          }
          const DevTensor y = new_device(*plan, rp.out, node);
          plan->steps.push_back([this, p, x, y, where] {
            const cudaError_t e =
                half_ ? cuda::launch_resize_nearest(p, static_cast<const __half*>(x.ptr), static_cast<__half*>(y.ptr), stream_)
                      : cuda::launch_resize_nearest(p, static_cast<const float*>(x.ptr), static_cast<float*>(y.ptr), stream_);
            ONNX_CUDA(e, where);
          });
          out.kind = Value::Kind::kDevice;
          out.dev = y;
          break;
        }
        case Op::kTranspose: {
          const DevTensor x = device_of(*plan, values, node.inputs[0], node);
          const int rank = static_cast<int>(x.shape.size());
          INSTANTID_CHECK(rank >= 1 && rank <= cuda::kMaxDims, where, ": rank ", rank,
                          " is not supported, expected 1..", cuda::kMaxDims);
          const auto perm = transpose_perm(node, rank);
          cuda::TransposeParams p;
          p.rank = rank;
          p.n = count(x.shape);
          std::int64_t stride[cuda::kMaxDims];
          std::int64_t s = 1;
          for (int d = rank; d-- > 0;) {
            stride[d] = s;
            s *= x.shape[static_cast<std::size_t>(d)];
          }
          Shape os;
          for (int d = 0; d < rank; ++d) {
            const auto pd = static_cast<std::size_t>(perm[static_cast<std::size_t>(d)]);
            p.out_shape[d] = x.shape[pd];
            p.in_stride[d] = stride[pd];
            os.push_back(x.shape[pd]);
          }
          const DevTensor y = new_device(*plan, os, node);
          plan->steps.push_back([this, p, x, y, where] {
            const cudaError_t e =
                half_ ? cuda::launch_transpose(p, static_cast<const __half*>(x.ptr), static_cast<__half*>(y.ptr), stream_)
                      : cuda::launch_transpose(p, static_cast<const float*>(x.ptr), static_cast<float*>(y.ptr), stream_);
            ONNX_CUDA(e, where);
          });
          out.kind = Value::Kind::kDevice;
          out.dev = y;
          break;
        }
        case Op::kConcat: {
          std::vector<DevTensor> parts;
          for (int id : node.inputs) parts.push_back(device_of(*plan, values, id, node));
          const int rank = static_cast<int>(parts[0].shape.size());
          const auto axis = static_cast<std::size_t>(
              normalize_axis(node, node.attr_int("axis", 0), rank, "axis"));
          Shape s = parts[0].shape;
          s[axis] = 0;
          for (const DevTensor& t : parts) {
            INSTANTID_CHECK(static_cast<int>(t.shape.size()) == rank, where, ": input ranks differ");
            for (std::size_t d = 0; d < s.size(); ++d) {
              INSTANTID_CHECK(d == axis || t.shape[d] == parts[0].shape[d], where, ": input ",
                              shape_string(t.shape), " does not match ", shape_string(parts[0].shape),
                              " outside axis ", axis);
            }
            s[axis] += t.shape[axis];
          }
          std::int64_t outer = 1, inner = 1;
          for (std::size_t d = 0; d < axis; ++d) outer *= s[d];
          for (std::size_t d = axis + 1; d < s.size(); ++d) inner *= s[d];
          const DevTensor y = new_device(*plan, s, node);
          const std::size_t es = elem_bytes();
          std::int64_t offset = 0;
          for (const DevTensor& t : parts) {
            const std::size_t width = static_cast<std::size_t>(t.shape[axis] * inner) * es;
            const std::size_t pitch = static_cast<std::size_t>(s[axis] * inner) * es;
            char* dst = static_cast<char*>(y.ptr) + static_cast<std::size_t>(offset) * es;
            const void* src = t.ptr;
            const auto rows = static_cast<std::size_t>(outer);
            if (width > 0 && rows > 0) {
              plan->steps.push_back([this, dst, src, width, pitch, rows, where] {
                ONNX_CUDA(cudaMemcpy2DAsync(dst, pitch, src, width, width, rows,
                                            cudaMemcpyDeviceToDevice, stream_), where);
              });
            }
            offset += t.shape[axis] * inner;
          }
          out.kind = Value::Kind::kDevice;
          out.dev = y;
          break;
        }
        case Op::kGemm:
        case Op::kMatMul: plan_gemm(*plan, values, node); break;
        default:
          throw Error(make_message(where, ": op ", node.op_type,
                                   " on float tensor data is not supported by the CUDA backend; "
                                   "use the cpu device"));
      }
    } catch (const Error& e) {
      const std::string msg = e.what();
      if (msg.rfind(graph_.path, 0) == 0) throw;
      throw Error(make_message(graph_.path, ": ", msg));
    }
  }
  for (int id : graph_.output_ids) {
    const Value& v = values[static_cast<std::size_t>(id)];
    OutputSlot slot;
    if (v.kind == Value::Kind::kDevice) {
      slot.on_device = true;
      slot.dev = v.dev;
      if (half_) {
        slot.staging = plan->alloc(static_cast<std::size_t>(count(v.dev.shape)) * 4, graph_.path);
      }
    } else {
      slot.host = v.host;
    }
    plan->outputs.push_back(std::move(slot));
  }
  return plan;
}

}  // namespace

std::unique_ptr<CudaBackend> make_cuda_backend(const Graph& graph, const ExecutorOptions& options) {
  return std::make_unique<CudaExecutor>(graph, options);
}

}  // namespace instantid::onnx
