// A pickle interpreter for exactly what torch.save writes for a nested dict of tensors. It builds
// a small object graph in an arena (indices, not pointers, so a cyclic or hostile graph cannot
// leak or recurse) and never calls anything: the few allowed globals are recognised by name and
// their effect is reproduced here.

#include <cstdio>
#include <map>
#include <string>
#include <unordered_map>

#include "bytes.hpp"
#include "instantid/checkpoint.hpp"
#include "instantid/error.hpp"

namespace instantid {

using namespace checkpoint_detail;

namespace {

enum class Kind : std::uint8_t {
  kNone,
  kBool,
  kInt,
  kString,
  kTuple,
  kList,
  kDict,
  kGlobal,
  kStorage,
  kTensor
};

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
      return "int";
    case Kind::kString:
      return "str";
    case Kind::kTuple:
      return "tuple";
    case Kind::kList:
      return "list";
    case Kind::kDict:
      return "dict";
    case Kind::kGlobal:
      return "global";
    case Kind::kStorage:
      return "storage";
    case Kind::kTensor:
      return "tensor";
  }
  return "?";
}

enum class Global : std::uint8_t {
  kOrderedDict,
  kRebuildTensorV2,
  kRebuildParameter,
  kFloatStorage,
  kHalfStorage,
  kBFloat16Storage
};

struct GlobalName {
  const char* module;
  const char* name;
  Global id;
};

constexpr GlobalName kAllowedGlobals[] = {
    {"collections", "OrderedDict", Global::kOrderedDict},
    {"torch._utils", "_rebuild_tensor_v2", Global::kRebuildTensorV2},
    {"torch._utils", "_rebuild_parameter", Global::kRebuildParameter},
    {"torch", "FloatStorage", Global::kFloatStorage},
    {"torch", "HalfStorage", Global::kHalfStorage},
    {"torch", "BFloat16Storage", Global::kBFloat16Storage},
};

struct Object {
  Kind kind = Kind::kNone;
  std::int64_t value = 0;          // bool, int; storage: numel; tensor: storage offset
  std::string text;                // str; storage: key
  std::vector<std::size_t> items;  // tuple, list; dict: key, value, key, value...; tensor: storage
  Global global = Global::kOrderedDict;
  DType dtype = DType::kF32;          // storage
  std::vector<std::int64_t> shape;    // tensor
  std::vector<std::int64_t> strides;  // tensor
};

const char* opcode_name(std::uint8_t op) {
  switch (op) {
    case '(':
      return "MARK";
    case '.':
      return "STOP";
    case '0':
      return "POP";
    case '1':
      return "POP_MARK";
    case '2':
      return "DUP";
    case 'F':
      return "FLOAT";
    case 'I':
      return "INT";
    case 'J':
      return "BININT";
    case 'K':
      return "BININT1";
    case 'L':
      return "LONG";
    case 'M':
      return "BININT2";
    case 'N':
      return "NONE";
    case 'P':
      return "PERSID";
    case 'Q':
      return "BINPERSID";
    case 'R':
      return "REDUCE";
    case 'S':
      return "STRING";
    case 'T':
      return "BINSTRING";
    case 'U':
      return "SHORT_BINSTRING";
    case 'V':
      return "UNICODE";
    case 'X':
      return "BINUNICODE";
    case 'a':
      return "APPEND";
    case 'b':
      return "BUILD";
    case 'c':
      return "GLOBAL";
    case 'd':
      return "DICT";
    case '}':
      return "EMPTY_DICT";
    case 'e':
      return "APPENDS";
    case 'g':
      return "GET";
    case 'h':
      return "BINGET";
    case 'i':
      return "INST";
    case 'j':
      return "LONG_BINGET";
    case 'l':
      return "LIST";
    case ']':
      return "EMPTY_LIST";
    case 'o':
      return "OBJ";
    case 'p':
      return "PUT";
    case 'q':
      return "BINPUT";
    case 'r':
      return "LONG_BINPUT";
    case 's':
      return "SETITEM";
    case 't':
      return "TUPLE";
    case ')':
      return "EMPTY_TUPLE";
    case 'u':
      return "SETITEMS";
    case 'G':
      return "BINFLOAT";
    case 0x80:
      return "PROTO";
    case 0x81:
      return "NEWOBJ";
    case 0x82:
      return "EXT1";
    case 0x83:
      return "EXT2";
    case 0x84:
      return "EXT4";
    case 0x85:
      return "TUPLE1";
    case 0x86:
      return "TUPLE2";
    case 0x87:
      return "TUPLE3";
    case 0x88:
      return "NEWTRUE";
    case 0x89:
      return "NEWFALSE";
    case 0x8a:
      return "LONG1";
    case 0x8b:
      return "LONG4";
    case 'B':
      return "BINBYTES";
    case 'C':
      return "SHORT_BINBYTES";
    case 0x8c:
      return "SHORT_BINUNICODE";
    case 0x8d:
      return "BINUNICODE8";
    case 0x8e:
      return "BINBYTES8";
    case 0x8f:
      return "EMPTY_SET";
    case 0x90:
      return "ADDITEMS";
    case 0x91:
      return "FROZENSET";
    case 0x92:
      return "NEWOBJ_EX";
    case 0x93:
      return "STACK_GLOBAL";
    case 0x94:
      return "MEMOIZE";
    case 0x95:
      return "FRAME";
    case 0x96:
      return "BYTEARRAY8";
    case 0x97:
      return "NEXT_BUFFER";
    case 0x98:
      return "READONLY_BUFFER";
    default:
      return "unknown";
  }
}

class Machine {
 public:
  Machine(ByteSpan pickle, const ReaderLimits& limits) : in_(pickle), limits_(limits) {}

  std::size_t run();
  std::vector<PickledTensor> flatten(std::size_t root);

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(make_message("pickle: ", what, " (opcode at byte ", op_pos_, ")"));
  }
  const std::uint8_t* take(std::size_t n) {
    if (in_.size - pos_ < n) {
      throw Error(make_message("pickle: truncated: opcode ", opcode_name(op_), " at byte ", op_pos_,
                               " needs ", n, " more bytes, got ", in_.size - pos_));
    }
    const std::uint8_t* p = in_.data + pos_;
    pos_ += n;
    return p;
  }
  std::size_t make(Object o) {
    count_refs(1);
    objects_.push_back(std::move(o));
    return objects_.size() - 1;
  }
  // Objects created plus references stored in containers: bounds the memory a pickle within
  // max_pickle_bytes can make us hold (e.g. "}" followed by millions of "NNs").
  void count_refs(std::size_t n) {
    refs_ += n;
    if (refs_ > limits_.max_pickle_objects) {
      fail(make_message("more objects and references than the limit max_pickle_objects = ",
                        limits_.max_pickle_objects));
    }
  }
  void push(std::size_t index) {
    if (stack_.size() >= limits_.max_pickle_stack) {
      fail(make_message("stack deeper than the limit max_pickle_stack = ",
                        limits_.max_pickle_stack));
    }
    stack_.push_back(index);
  }
  std::size_t pop() {
    if (stack_.size() <= floor()) fail(make_message(opcode_name(op_), " on an empty stack"));
    const std::size_t v = stack_.back();
    stack_.pop_back();
    return v;
  }
  std::size_t top() const {
    if (stack_.size() <= floor()) fail(make_message(opcode_name(op_), " on an empty stack"));
    return stack_.back();
  }
  std::size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  // Pops everything above the last MARK (and the mark).
  std::vector<std::size_t> pop_mark() {
    if (marks_.empty()) fail(make_message(opcode_name(op_), " without a MARK"));
    const std::size_t m = marks_.back();
    marks_.pop_back();
    std::vector<std::size_t> items(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return items;
  }
  std::string read_text(std::size_t n) {
    if (n > limits_.max_string_bytes) {
      fail(make_message("string of ", n,
                        " bytes exceeds the limit max_string_bytes = ", limits_.max_string_bytes));
    }
    const std::uint8_t* p = take(n);
    return std::string(reinterpret_cast<const char*>(p), n);
  }
  std::string read_line() {
    std::string s;
    for (;;) {
      const char c = static_cast<char>(*take(1));
      if (c == '\n') return s;
      if (s.size() >= limits_.max_string_bytes) {
        fail(make_message("GLOBAL name longer than the limit max_string_bytes = ",
                          limits_.max_string_bytes));
      }
      s.push_back(c);
    }
  }
  void memo_put(std::uint64_t key) {
    const std::size_t v = top();
    auto it = memo_.find(key);
    if (it != memo_.end()) {
      it->second = v;
      return;
    }
    if (memo_.size() >= limits_.max_pickle_memo) {
      fail(make_message("memo larger than the limit max_pickle_memo = ", limits_.max_pickle_memo));
    }
    memo_.emplace(key, v);
  }
  void memo_get(std::uint64_t key) {
    auto it = memo_.find(key);
    if (it == memo_.end()) fail(make_message("memo key ", key, " was never stored"));
    push(it->second);
  }
  void push_tuple(std::vector<std::size_t> items) {
    Object o;
    o.kind = Kind::kTuple;
    count_refs(items.size());
    o.items = std::move(items);
    push(make(std::move(o)));
  }
  void push_int(std::int64_t v) {
    Object o;
    o.kind = Kind::kInt;
    o.value = v;
    push(make(std::move(o)));
  }
  std::int64_t as_int(std::size_t index, const char* what) const {
    const Object& o = objects_[index];
    if (o.kind != Kind::kInt && o.kind != Kind::kBool) {
      fail(make_message(what, ": got ", kind_name(o.kind), ", expected int"));
    }
    return o.value;
  }
  std::vector<std::int64_t> as_int_tuple(std::size_t index, const char* what) const {
    const Object& o = objects_[index];
    if (o.kind != Kind::kTuple) {
      fail(make_message(what, ": got ", kind_name(o.kind), ", expected a tuple of ints"));
    }
    std::vector<std::int64_t> out;
    for (std::size_t item : o.items) out.push_back(as_int(item, what));
    return out;
  }
  void set_items(std::size_t dict, const std::vector<std::size_t>& kv) {
    Object& d = objects_[dict];
    if (d.kind != Kind::kDict) {
      fail(make_message(opcode_name(op_), " on a ", kind_name(d.kind), ", expected a dict"));
    }
    if (kv.size() % 2 != 0) fail("SETITEMS with an odd number of items");
    count_refs(kv.size());
    d.items.insert(d.items.end(), kv.begin(), kv.end());
  }
  void global();
  void reduce();
  void persistent_id();
  void flatten_into(std::size_t dict, const std::string& prefix, int depth,
                    std::vector<PickledTensor>& out);

  ByteSpan in_;
  const ReaderLimits& limits_;
  std::size_t pos_ = 0;
  std::size_t op_pos_ = 0;
  std::uint8_t op_ = 0;
  std::vector<Object> objects_;
  std::vector<std::size_t> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<std::uint64_t, std::size_t> memo_;
  std::uint64_t refs_ = 0;
};

void Machine::global() {
  const std::string module = read_line();
  const std::string name = read_line();
  for (const GlobalName& g : kAllowedGlobals) {
    if (module == g.module && name == g.name) {
      Object o;
      o.kind = Kind::kGlobal;
      o.global = g.id;
      o.text = module + "." + name;
      push(make(std::move(o)));
      return;
    }
  }
  fail(make_message("global \"", module, ".", name,
                    "\" is not allowed; allowed: collections.OrderedDict, "
                    "torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter, "
                    "torch.FloatStorage, torch.HalfStorage, torch.BFloat16Storage"));
}

void Machine::reduce() {
  const std::size_t args_index = pop();
  const std::size_t callable_index = pop();
  const Object& callable = objects_[callable_index];
  if (callable.kind != Kind::kGlobal) {
    fail(make_message("REDUCE calls a ", kind_name(callable.kind), ", expected an allowed global"));
  }
  const Object& args_obj = objects_[args_index];
  if (args_obj.kind != Kind::kTuple) {
    fail(make_message("REDUCE arguments: got ", kind_name(args_obj.kind), ", expected a tuple"));
  }
  const std::vector<std::size_t> args = args_obj.items;
  switch (callable.global) {
    case Global::kOrderedDict: {
      if (!args.empty()) {
        fail(make_message("collections.OrderedDict called with ", args.size(),
                          " arguments, expected ()"));
      }
      Object d;
      d.kind = Kind::kDict;
      push(make(std::move(d)));
      return;
    }
    case Global::kRebuildParameter: {
      // _rebuild_parameter(data, requires_grad, backward_hooks) → the tensor itself.
      if (args.size() != 3 || objects_[args[0]].kind != Kind::kTensor) {
        fail("torch._utils._rebuild_parameter: expected (tensor, requires_grad, hooks)");
      }
      push(args[0]);
      return;
    }
    case Global::kRebuildTensorV2: {
      // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
      if (args.size() < 4 || args.size() > 7) {
        fail(make_message("torch._utils._rebuild_tensor_v2 called with ", args.size(),
                          " arguments, expected 6 (storage, offset, size, stride, "
                          "requires_grad, hooks)"));
      }
      if (objects_[args[0]].kind != Kind::kStorage) {
        fail(make_message("torch._utils._rebuild_tensor_v2 storage: got ",
                          kind_name(objects_[args[0]].kind), ", expected a persistent storage"));
      }
      Object t;
      t.kind = Kind::kTensor;
      t.items = {args[0]};
      t.value = as_int(args[1], "tensor storage offset");
      t.shape = as_int_tuple(args[2], "tensor size");
      t.strides = as_int_tuple(args[3], "tensor stride");
      if (t.shape.size() != t.strides.size()) {
        fail(make_message("tensor size ", shape_string(t.shape), " and stride ",
                          shape_string(t.strides), " differ in rank"));
      }
      if (static_cast<int>(t.shape.size()) > limits_.max_ndim) {
        fail(make_message("tensor of ", t.shape.size(),
                          " dimensions exceeds the limit max_ndim = ", limits_.max_ndim));
      }
      if (t.value < 0) fail(make_message("tensor storage offset ", t.value, " is negative"));
      std::int64_t numel = 1;
      bool overflow = false;
      for (std::size_t d = 0; d < t.shape.size(); ++d) {
        if (t.shape[d] < 0 || t.strides[d] < 0) {
          fail(make_message("tensor size ", shape_string(t.shape), " / stride ",
                            shape_string(t.strides), ": expected non-negative values"));
        }
        overflow = overflow || !checked_mul(numel, t.shape[d], &numel);
      }
      if (overflow || numel > limits_.max_tensor_elements) {
        fail(make_message("tensor size ", shape_string(t.shape),
                          " has more elements than the limit max_tensor_elements = ",
                          limits_.max_tensor_elements));
      }
      push(make(std::move(t)));
      return;
    }
    case Global::kFloatStorage:
    case Global::kHalfStorage:
    case Global::kBFloat16Storage:
      fail(make_message("global \"", callable.text, "\" cannot be called"));
  }
}

void Machine::persistent_id() {
  // ("storage", <storage class>, key: str, location: str, numel: int)
  const std::size_t pid_index = pop();
  const Object& pid = objects_[pid_index];
  if (pid.kind != Kind::kTuple || pid.items.size() != 5 ||
      objects_[pid.items[0]].kind != Kind::kString || objects_[pid.items[0]].text != "storage") {
    fail("persistent id: expected (\"storage\", storage class, key, location, numel)");
  }
  const Object& cls = objects_[pid.items[1]];
  if (cls.kind != Kind::kGlobal ||
      (cls.global != Global::kFloatStorage && cls.global != Global::kHalfStorage &&
       cls.global != Global::kBFloat16Storage)) {
    fail(
        "persistent id: storage class must be torch.FloatStorage, HalfStorage or "
        "BFloat16Storage");
  }
  const Object& key = objects_[pid.items[2]];
  if (key.kind != Kind::kString) fail("persistent id: storage key is not a str");
  Object s;
  s.kind = Kind::kStorage;
  s.dtype = cls.global == Global::kFloatStorage  ? DType::kF32
            : cls.global == Global::kHalfStorage ? DType::kF16
                                                 : DType::kBF16;
  s.text = key.text;
  s.value = as_int(pid.items[4], "persistent id storage numel");
  if (s.value < 0) fail(make_message("storage numel ", s.value, " is negative"));
  if (s.text.empty() || s.text.find('/') != std::string::npos ||
      s.text.find("..") != std::string::npos) {
    fail(make_message("storage key \"", s.text, "\" is not a plain name"));
  }
  push(make(std::move(s)));
}

std::size_t Machine::run() {
  for (;;) {
    op_pos_ = pos_;
    op_ = *take(1);
    switch (op_) {
      case 0x80: {  // PROTO
        const std::uint8_t v = *take(1);
        if (v < 2 || v > 5) fail(make_message("protocol ", int{v}, ", expected 2 to 5"));
        break;
      }
      case '.': {  // STOP
        if (!marks_.empty()) fail("STOP inside an unclosed MARK");
        return pop();
      }
      case '(':
        if (static_cast<int>(marks_.size()) >= limits_.max_pickle_depth) {
          fail(make_message("MARKs nested deeper than the limit max_pickle_depth = ",
                            limits_.max_pickle_depth));
        }
        marks_.push_back(stack_.size());
        break;
      case '}': {
        Object o;
        o.kind = Kind::kDict;
        push(make(std::move(o)));
        break;
      }
      case ']': {
        Object o;
        o.kind = Kind::kList;
        push(make(std::move(o)));
        break;
      }
      case ')':
        push_tuple({});
        break;
      case 't':
        push_tuple(pop_mark());
        break;
      case 0x85: {
        const std::size_t a = pop();
        push_tuple({a});
        break;
      }
      case 0x86: {
        const std::size_t b = pop();
        const std::size_t a = pop();
        push_tuple({a, b});
        break;
      }
      case 0x87: {
        const std::size_t c = pop();
        const std::size_t b = pop();
        const std::size_t a = pop();
        push_tuple({a, b, c});
        break;
      }
      case 'N':
        push(make(Object{}));
        break;
      case 0x88:
      case 0x89: {
        Object o;
        o.kind = Kind::kBool;
        o.value = op_ == 0x88 ? 1 : 0;
        push(make(std::move(o)));
        break;
      }
      case 'K':
        push_int(*take(1));
        break;
      case 'M':
        push_int(read_u16(take(2)));
        break;
      case 'J':
        push_int(static_cast<std::int32_t>(read_u32(take(4))));
        break;
      case 0x8a: {  // LONG1: n-byte little-endian two's complement
        const std::uint8_t n = *take(1);
        if (n > 8) fail(make_message("LONG1 of ", int{n}, " bytes, expected at most 8"));
        const std::uint8_t* p = take(n);
        std::uint64_t v = 0;
        for (int i = 0; i < n; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
        if (n > 0 && n < 8 && (p[n - 1] & 0x80) != 0) v |= ~std::uint64_t{0} << (8 * n);
        push_int(static_cast<std::int64_t>(v));
        break;
      }
      case 'X':
      case 'T':
      case 'U':
      case 0x8c: {
        const std::size_t n = (op_ == 'X' || op_ == 'T') ? read_u32(take(4)) : *take(1);
        Object o;
        o.kind = Kind::kString;
        o.text = read_text(n);
        push(make(std::move(o)));
        break;
      }
      case 'q':
        memo_put(*take(1));
        break;
      case 'r':
        memo_put(read_u32(take(4)));
        break;
      case 'h':
        memo_get(*take(1));
        break;
      case 'j':
        memo_get(read_u32(take(4)));
        break;
      case 'c':
        global();
        break;
      case 'R':
        reduce();
        break;
      case 'Q':
        persistent_id();
        break;
      case 's': {
        const std::size_t value = pop();
        const std::size_t key = pop();
        set_items(top(), {key, value});
        break;
      }
      case 'u': {
        const std::vector<std::size_t> kv = pop_mark();
        set_items(top(), kv);
        break;
      }
      case 'a':
      case 'e': {
        const std::vector<std::size_t> items =
            op_ == 'a' ? std::vector<std::size_t>{pop()} : pop_mark();
        Object& list = objects_[top()];
        if (list.kind != Kind::kList) {
          fail(make_message(opcode_name(op_), " on a ", kind_name(list.kind), ", expected a list"));
        }
        count_refs(items.size());
        list.items.insert(list.items.end(), items.begin(), items.end());
        break;
      }
      case 'b': {  // BUILD: only the attribute state of an OrderedDict (e.g. _metadata), dropped
        const std::size_t state = pop();
        const Kind target = objects_[top()].kind;
        const Kind state_kind = objects_[state].kind;
        if (target != Kind::kDict || (state_kind != Kind::kDict && state_kind != Kind::kNone)) {
          fail(make_message("BUILD of a ", kind_name(target), " with a ", kind_name(state_kind),
                            ", expected an OrderedDict with a dict state"));
        }
        break;
      }
      default: {
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02x", static_cast<unsigned>(op_));
        throw Error(make_message("pickle: opcode ", hex, " (", opcode_name(op_), ") at byte ",
                                 op_pos_, " is not supported"));
      }
    }
  }
}

void Machine::flatten_into(std::size_t dict, const std::string& prefix, int depth,
                           std::vector<PickledTensor>& out) {
  if (depth > limits_.max_pickle_depth) {
    throw Error(make_message("pickle: dicts nested deeper than the limit max_pickle_depth = ",
                             limits_.max_pickle_depth, " at \"", prefix, "\""));
  }
  const std::vector<std::size_t>& items = objects_[dict].items;
  for (std::size_t i = 0; i + 1 < items.size(); i += 2) {
    const Object& key = objects_[items[i]];
    if (key.kind != Kind::kString) {
      throw Error(make_message("pickle: dict key in \"", prefix, "\" is a ", kind_name(key.kind),
                               ", expected str"));
    }
    const std::string name = prefix.empty() ? key.text : prefix + "." + key.text;
    if (name.size() > limits_.max_string_bytes) {
      throw Error(
          make_message("pickle: tensor name of ", name.size(),
                       " bytes exceeds the limit max_string_bytes = ", limits_.max_string_bytes));
    }
    const Object& value = objects_[items[i + 1]];
    if (value.kind == Kind::kDict) {
      flatten_into(items[i + 1], name, depth + 1, out);
    } else if (value.kind == Kind::kTensor) {
      if (out.size() >= limits_.max_tensors) {
        throw Error(make_message("pickle: more tensors than the limit max_tensors = ",
                                 limits_.max_tensors));
      }
      const Object& storage = objects_[value.items[0]];
      PickledTensor t;
      t.name = name;
      t.storage_key = storage.text;
      t.dtype = storage.dtype;
      t.storage_numel = storage.value;
      t.storage_offset = value.value;
      t.shape = value.shape;
      t.strides = value.strides;
      out.push_back(std::move(t));
    } else {
      throw Error(make_message("pickle: value of \"", name, "\" is a ", kind_name(value.kind),
                               ", expected a tensor or a dict of tensors"));
    }
  }
}

std::vector<PickledTensor> Machine::flatten(std::size_t root) {
  if (objects_[root].kind != Kind::kDict) {
    throw Error(make_message("pickle: the checkpoint is a ", kind_name(objects_[root].kind),
                             ", expected a dict of tensors"));
  }
  std::vector<PickledTensor> out;
  flatten_into(root, "", 1, out);
  std::map<std::string, int> seen;
  for (const PickledTensor& t : out) {
    if (++seen[t.name] > 1) {
      throw Error(make_message("pickle: tensor name \"", t.name, "\" appears twice"));
    }
  }
  return out;
}

}  // namespace

std::vector<PickledTensor> parse_torch_pickle(ByteSpan pickle, const ReaderLimits& limits) {
  if (pickle.size > limits.max_pickle_bytes) {
    throw Error(make_message("pickle: ", pickle.size, " bytes exceed the limit max_pickle_bytes = ",
                             limits.max_pickle_bytes));
  }
  Machine machine(pickle, limits);
  const std::size_t root = machine.run();
  return machine.flatten(root);
}

}  // namespace instantid
