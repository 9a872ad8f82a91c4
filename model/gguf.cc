// GGUF v2/v3 parser: a bounds-checked cursor over the file bytes, the ggml type table, and the
// typed metadata getters. Every read checks the bytes left first; every count is bounded by the
// bytes that remain, so no input can make the parser read out of bounds, allocate without limit
// or loop for longer than the file is long.
#include "model/gguf.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/strings.h"

namespace kvasir::model {

static_assert(std::endian::native == std::endian::little, "the GGUF reader assumes little-endian");

namespace {

constexpr uint64_t kMaxStringBytes = uint64_t{1} << 30;    // 1 GiB, as gguf.cpp
constexpr uint64_t kMaxArrayElements = uint64_t{1} << 30;  // 1 Gi elements
constexpr int kMaxArrayDepth = 8;                          // nested arrays
constexpr uint32_t kMaxDims = 4;
constexpr uint64_t kMaxTensorNameBytes = 64;
constexpr uint32_t kDefaultAlignment = 32;
constexpr uint64_t kMaxReserve = 4096;       // entries reserved up front, whatever a count claims
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;  // key length, type, smallest value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 4 + 8;  // name length, n_dims, type, offset

struct GgmlTypeTraits {
  const char* name;
  int64_t block_size;  // 0: removed or unknown id
  int64_t block_bytes;
};

// Indexed by ggml type id (ggml.h enum ggml_type, as of GGML_TYPE_COUNT = 40).
constexpr GgmlTypeTraits kGgmlTypes[] = {
    {"f32", 1, 4},         // 0
    {"f16", 1, 2},         // 1
    {"q4_0", 32, 18},      // 2
    {"q4_1", 32, 20},      // 3
    {"q4_2", 0, 0},        // 4 (removed)
    {"q4_3", 0, 0},        // 5 (removed)
    {"q5_0", 32, 22},      // 6
    {"q5_1", 32, 24},      // 7
    {"q8_0", 32, 34},      // 8
    {"q8_1", 32, 36},      // 9
    {"q2_K", 256, 84},     // 10
    {"q3_K", 256, 110},    // 11
    {"q4_K", 256, 144},    // 12
    {"q5_K", 256, 176},    // 13
    {"q6_K", 256, 210},    // 14
    {"q8_K", 256, 292},    // 15
    {"iq2_xxs", 256, 66},  // 16
    {"iq2_xs", 256, 74},   // 17
    {"iq3_xxs", 256, 98},  // 18
    {"iq1_s", 256, 50},    // 19
    {"iq4_nl", 32, 18},    // 20
    {"iq3_s", 256, 110},   // 21
    {"iq2_s", 256, 82},    // 22
    {"iq4_xs", 256, 136},  // 23
    {"i8", 1, 1},          // 24
    {"i16", 1, 2},         // 25
    {"i32", 1, 4},         // 26
    {"i64", 1, 8},         // 27
    {"f64", 1, 8},         // 28
    {"iq1_m", 256, 56},    // 29
    {"bf16", 1, 2},        // 30
    {"q4_0_4_4", 0, 0},    // 31 (removed)
    {"q4_0_4_8", 0, 0},    // 32 (removed)
    {"q4_0_8_8", 0, 0},    // 33 (removed)
    {"tq1_0", 256, 54},    // 34
    {"tq2_0", 256, 66},    // 35
    {"iq4_nl_4_4", 0, 0},  // 36 (removed)
    {"iq4_nl_4_8", 0, 0},  // 37 (removed)
    {"iq4_nl_8_8", 0, 0},  // 38 (removed)
    {"mxfp4", 32, 17},     // 39
};
constexpr uint32_t kGgmlTypeCount = sizeof(kGgmlTypes) / sizeof(kGgmlTypes[0]);

// Bytes of one scalar of a metadata value type; 0 for string, array and unknown types.
uint64_t ScalarSize(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
      return 2;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kFloat32:
      return 4;
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
    case GgufValueType::kFloat64:
      return 8;
    case GgufValueType::kString:
    case GgufValueType::kArray:
      return 0;
  }
  return 0;
}

bool KnownValueType(uint32_t t) { return t <= static_cast<uint32_t>(GgufValueType::kFloat64); }

const char* ValueTypeName(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8:
      return "u8";
    case GgufValueType::kInt8:
      return "i8";
    case GgufValueType::kUint16:
      return "u16";
    case GgufValueType::kInt16:
      return "i16";
    case GgufValueType::kUint32:
      return "u32";
    case GgufValueType::kInt32:
      return "i32";
    case GgufValueType::kFloat32:
      return "f32";
    case GgufValueType::kBool:
      return "bool";
    case GgufValueType::kString:
      return "string";
    case GgufValueType::kArray:
      return "array";
    case GgufValueType::kUint64:
      return "u64";
    case GgufValueType::kInt64:
      return "i64";
    case GgufValueType::kFloat64:
      return "f64";
  }
  return "unknown";
}

template <typename T>
T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

bool IsIntegerType(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
    case GgufValueType::kBool:
      return true;
    default:
      return false;
  }
}

// Decodes one integer scalar of type `t` at `p` (validated bytes). False when it does not fit in
// int64 (a u64 above INT64_MAX) or `t` is not an integer type.
bool DecodeInt(GgufValueType t, const uint8_t* p, int64_t* out) {
  switch (t) {
    case GgufValueType::kUint8:
    case GgufValueType::kBool:
      *out = Load<uint8_t>(p);
      return true;
    case GgufValueType::kInt8:
      *out = Load<int8_t>(p);
      return true;
    case GgufValueType::kUint16:
      *out = Load<uint16_t>(p);
      return true;
    case GgufValueType::kInt16:
      *out = Load<int16_t>(p);
      return true;
    case GgufValueType::kUint32:
      *out = Load<uint32_t>(p);
      return true;
    case GgufValueType::kInt32:
      *out = Load<int32_t>(p);
      return true;
    case GgufValueType::kInt64:
      *out = Load<int64_t>(p);
      return true;
    case GgufValueType::kUint64: {
      const uint64_t u = Load<uint64_t>(p);
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
      *out = static_cast<int64_t>(u);
      return true;
    }
    default:
      return false;
  }
}

bool DecodeFloat(GgufValueType t, const uint8_t* p, double* out) {
  switch (t) {
    case GgufValueType::kFloat32:
      *out = Load<float>(p);
      return true;
    case GgufValueType::kFloat64:
      *out = Load<double>(p);
      return true;
    case GgufValueType::kUint64:
      *out = static_cast<double>(Load<uint64_t>(p));
      return true;
    default: {
      int64_t i = 0;
      if (!DecodeInt(t, p, &i)) return false;
      *out = static_cast<double>(i);
      return true;
    }
  }
}

bool MulOverflows(uint64_t a, uint64_t b, uint64_t* out) {
  return __builtin_mul_overflow(a, b, out);
}
bool AddOverflows(uint64_t a, uint64_t b, uint64_t* out) {
  return __builtin_add_overflow(a, b, out);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The parser: a cursor over `bytes` that fills a GgufFile.

class GgufParser {
 public:
  GgufParser(std::span<const uint8_t> bytes, std::string_view name)
      : data_(bytes.data()), size_(bytes.size()), name_(name) {}

  absl::Status Run(GgufFile* file);

 private:
  absl::Status Error(uint64_t at, std::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(ToAbsl(name_), ": ", ToAbsl(what), " (at byte ", at, ")"));
  }
  uint64_t Left() const { return size_ - pos_; }
  absl::Status Need(uint64_t n, std::string_view what) const {
    if (n > Left()) {
      return Error(pos_, absl::StrCat("truncated file: ", ToAbsl(what), " needs ", n,
                                      " bytes, only ", Left(), " left"));
    }
    return absl::OkStatus();
  }
  template <typename T>
  absl::Status Read(T* out, std::string_view what) {
    KVASIR_RETURN_IF_ERROR(Need(sizeof(T), what));
    *out = Load<T>(data_ + pos_);
    pos_ += sizeof(T);
    return absl::OkStatus();
  }
  // A gguf_string: u64 length then the bytes. Returns a view into the buffer.
  absl::Status ReadString(std::string_view* out, std::string_view what) {
    const uint64_t at = pos_;
    uint64_t len = 0;
    KVASIR_RETURN_IF_ERROR(Read(&len, what));
    if (len > kMaxStringBytes) {
      return Error(at, absl::StrCat(ToAbsl(what), " length ", len, " exceeds 1 GiB"));
    }
    KVASIR_RETURN_IF_ERROR(Need(len, what));
    *out = std::string_view(reinterpret_cast<const char*>(data_ + pos_), len);
    pos_ += len;
    return absl::OkStatus();
  }
  // Skips the elements of an array of `type` x `count` starting at pos_.
  absl::Status SkipArrayElements(GgufValueType type, uint64_t count, int depth,
                                 std::string_view key);
  absl::Status ReadArrayHeader(GgufValueType* type, uint64_t* count, int depth,
                               std::string_view key);
  absl::Status ReadValue(GgufValueType type, GgufValue* value, std::string_view key);
  absl::Status ReadTensorInfo(GgufTensorInfo* info);

  const uint8_t* data_;
  uint64_t size_;
  std::string_view name_;
  uint64_t pos_ = 0;
};

absl::Status GgufParser::ReadArrayHeader(GgufValueType* type, uint64_t* count, int depth,
                                         std::string_view key) {
  if (depth > kMaxArrayDepth) {
    return Error(
        pos_, absl::StrCat("key '", ToAbsl(key), "': arrays nested deeper than ", kMaxArrayDepth));
  }
  const uint64_t at = pos_;
  uint32_t raw_type = 0;
  KVASIR_RETURN_IF_ERROR(Read(&raw_type, "array element type"));
  if (!KnownValueType(raw_type)) {
    return Error(at,
                 absl::StrCat("key '", ToAbsl(key), "': unknown array element type ", raw_type));
  }
  *type = static_cast<GgufValueType>(raw_type);
  const uint64_t count_at = pos_;
  KVASIR_RETURN_IF_ERROR(Read(count, "array length"));
  // Every element takes at least one byte (strings 8, arrays 12), so the bytes left bound it.
  uint64_t min_elem = ScalarSize(*type);
  if (*type == GgufValueType::kString) min_elem = 8;
  if (*type == GgufValueType::kArray) min_elem = 12;
  uint64_t min_bytes = 0;
  if (*count > kMaxArrayElements || MulOverflows(*count, min_elem, &min_bytes) ||
      min_bytes > Left()) {
    return Error(count_at, absl::StrCat("key '", ToAbsl(key), "': array length ", *count, " of ",
                                        ValueTypeName(*type), " is larger than the bytes left (",
                                        Left(), ")"));
  }
  return absl::OkStatus();
}

absl::Status GgufParser::SkipArrayElements(GgufValueType type, uint64_t count, int depth,
                                           std::string_view key) {
  if (type == GgufValueType::kString) {
    for (uint64_t i = 0; i < count; ++i) {
      std::string_view s;
      KVASIR_RETURN_IF_ERROR(ReadString(&s, "array string"));
    }
    return absl::OkStatus();
  }
  if (type == GgufValueType::kArray) {
    for (uint64_t i = 0; i < count; ++i) {
      GgufValueType inner_type;
      uint64_t inner_count = 0;
      KVASIR_RETURN_IF_ERROR(ReadArrayHeader(&inner_type, &inner_count, depth + 1, key));
      KVASIR_RETURN_IF_ERROR(SkipArrayElements(inner_type, inner_count, depth + 1, key));
    }
    return absl::OkStatus();
  }
  // Scalars: the header check already bounded count * size by the bytes left.
  pos_ += count * ScalarSize(type);
  return absl::OkStatus();
}

absl::Status GgufParser::ReadValue(GgufValueType type, GgufValue* value, std::string_view key) {
  value->type_ = type;
  const uint8_t* p = data_ + pos_;
  const std::string what = absl::StrCat("value of key '", ToAbsl(key), "'");
  switch (type) {
    case GgufValueType::kString: {
      std::string_view s;
      KVASIR_RETURN_IF_ERROR(ReadString(&s, what));
      value->bytes_ = reinterpret_cast<const uint8_t*>(s.data());
      value->nbytes_ = s.size();
      return absl::OkStatus();
    }
    case GgufValueType::kArray: {
      GgufValueType elem_type;
      uint64_t count = 0;
      KVASIR_RETURN_IF_ERROR(ReadArrayHeader(&elem_type, &count, 1, key));
      const uint64_t start = pos_;
      KVASIR_RETURN_IF_ERROR(SkipArrayElements(elem_type, count, 1, key));
      value->array_type_ = elem_type;
      value->array_size_ = count;
      value->bytes_ = data_ + start;
      value->nbytes_ = pos_ - start;
      return absl::OkStatus();
    }
    case GgufValueType::kFloat32:
    case GgufValueType::kFloat64:
      KVASIR_RETURN_IF_ERROR(Need(ScalarSize(type), what));
      DecodeFloat(type, p, &value->f_);
      break;
    case GgufValueType::kUint64:
      KVASIR_RETURN_IF_ERROR(Need(8, what));
      value->u_ = Load<uint64_t>(p);
      value->i_ = static_cast<int64_t>(value->u_);  // only read through AsInt's range check
      break;
    default:
      KVASIR_RETURN_IF_ERROR(Need(ScalarSize(type), what));
      DecodeInt(type, p, &value->i_);
      break;
  }
  pos_ += ScalarSize(type);
  return absl::OkStatus();
}

absl::Status GgufParser::ReadTensorInfo(GgufTensorInfo* info) {
  const uint64_t name_at = pos_;
  std::string_view name;
  KVASIR_RETURN_IF_ERROR(ReadString(&name, "tensor name"));
  if (name.size() > kMaxTensorNameBytes) {
    return Error(name_at, absl::StrCat("tensor name of ", name.size(), " bytes exceeds ",
                                       kMaxTensorNameBytes));
  }
  info->name = std::string(name);
  const std::string tensor = absl::StrCat("tensor '", info->name, "'");
  const uint64_t dims_at = pos_;
  uint32_t n_dims = 0;
  KVASIR_RETURN_IF_ERROR(Read(&n_dims, "tensor n_dims"));
  if (n_dims > kMaxDims) {
    return Error(dims_at, absl::StrCat(tensor, ": n_dims ", n_dims, " exceeds ", kMaxDims));
  }
  uint64_t elements = 1;
  info->ne.resize(n_dims);
  for (uint32_t d = 0; d < n_dims; ++d) {
    const uint64_t at = pos_;
    uint64_t ne = 0;
    KVASIR_RETURN_IF_ERROR(Read(&ne, "tensor dimension"));
    if (ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return Error(at, absl::StrCat(tensor, ": negative dimension ne[", d, "]"));
    }
    if (MulOverflows(elements, ne, &elements) ||
        elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return Error(at, absl::StrCat(tensor, ": element count overflows int64"));
    }
    info->ne[d] = static_cast<int64_t>(ne);
  }
  const uint64_t type_at = pos_;
  KVASIR_RETURN_IF_ERROR(Read(&info->ggml_type, "tensor type"));
  int64_t block_size = 0;
  int64_t block_bytes = 0;
  if (!GgmlTypeSize(info->ggml_type, &block_size, &block_bytes)) {
    return Error(type_at, absl::StrCat(tensor, ": unknown or removed ggml type ", info->ggml_type));
  }
  const int64_t ne0 = n_dims > 0 ? info->ne[0] : 1;
  if (ne0 % block_size != 0) {
    return Error(type_at, absl::StrCat(tensor, ": ne[0] = ", ne0, " is not a multiple of the ",
                                       GgmlTypeName(info->ggml_type), " block size ", block_size));
  }
  // bytes = ne0 / block * block_bytes * ne1 * ne2 * ne3
  uint64_t bytes = static_cast<uint64_t>(ne0 / block_size) * static_cast<uint64_t>(block_bytes);
  for (uint32_t d = 1; d < n_dims; ++d) {
    if (MulOverflows(bytes, static_cast<uint64_t>(info->ne[d]), &bytes)) {
      return Error(type_at, absl::StrCat(tensor, ": byte size overflows"));
    }
  }
  info->size_bytes = bytes;
  KVASIR_RETURN_IF_ERROR(Read(&info->offset, "tensor offset"));
  return absl::OkStatus();
}

absl::Status GgufParser::Run(GgufFile* file) {
  // Header.
  if (size_ < 4 || std::memcmp(data_, "GGUF", 4) != 0) {
    return Error(0, "not a GGUF file (bad magic)");
  }
  pos_ = 4;
  const uint64_t version_at = pos_;
  uint32_t version = 0;
  KVASIR_RETURN_IF_ERROR(Read(&version, "version"));
  if (version != 0 && (version & 0xFFFFu) == 0) {
    return Error(version_at, "big-endian GGUF files are not supported");
  }
  if (version != 2 && version != 3) {
    return Error(version_at,
                 absl::StrCat("unsupported GGUF version ", version, " (Kvasir reads 2 and 3)"));
  }
  file->version_ = version;
  uint64_t n_tensors = 0;
  uint64_t n_kv = 0;
  const uint64_t n_tensors_at = pos_;
  KVASIR_RETURN_IF_ERROR(Read(&n_tensors, "tensor count"));
  const uint64_t n_kv_at = pos_;
  KVASIR_RETURN_IF_ERROR(Read(&n_kv, "metadata count"));
  uint64_t min_bytes = 0;
  if (MulOverflows(n_kv, kMinKvBytes, &min_bytes) || min_bytes > Left()) {
    return Error(n_kv_at, absl::StrCat("metadata count ", n_kv, " is larger than the ", Left(),
                                       " bytes left allow (truncated or corrupt file)"));
  }
  if (MulOverflows(n_tensors, kMinTensorInfoBytes, &min_bytes) || min_bytes > Left()) {
    return Error(n_tensors_at,
                 absl::StrCat("tensor count ", n_tensors, " is larger than the ", Left(),
                              " bytes left allow (truncated or corrupt file)"));
  }

  // Metadata.
  file->metadata_.reserve(std::min<uint64_t>(n_kv, kMaxReserve));
  uint64_t alignment_at = 0;
  for (uint64_t i = 0; i < n_kv; ++i) {
    const uint64_t key_at = pos_;
    std::string_view key;
    KVASIR_RETURN_IF_ERROR(ReadString(&key, "metadata key"));
    const uint64_t type_at = pos_;
    uint32_t raw_type = 0;
    KVASIR_RETURN_IF_ERROR(Read(&raw_type, "metadata value type"));
    if (!KnownValueType(raw_type)) {
      return Error(type_at, absl::StrCat("key '", ToAbsl(key), "': unknown value type ", raw_type));
    }
    if (key == "general.alignment") alignment_at = pos_;
    GgufValue value;
    KVASIR_RETURN_IF_ERROR(ReadValue(static_cast<GgufValueType>(raw_type), &value, key));
    auto [it, inserted] = file->metadata_index_.emplace(std::string(key), file->metadata_.size());
    if (!inserted) {
      return Error(key_at, absl::StrCat("duplicate metadata key '", ToAbsl(key), "'"));
    }
    file->metadata_.emplace_back(std::string(key), value);
  }

  // general.alignment: a u32 power of two.
  file->alignment_ = kDefaultAlignment;
  if (const GgufValue* a = file->Find("general.alignment")) {
    if (a->type() != GgufValueType::kUint32) {
      return Error(alignment_at, absl::StrCat("general.alignment must be of type u32, not ",
                                              ValueTypeName(a->type())));
    }
    const int64_t align = a->AsInt().value_or(0);
    if (align <= 0 || !std::has_single_bit(static_cast<uint64_t>(align))) {
      return Error(alignment_at,
                   absl::StrCat("general.alignment ", align, " is not a power of two"));
    }
    file->alignment_ = static_cast<uint32_t>(align);
  }
  const uint64_t alignment = file->alignment_;

  // Tensor infos; offsets must be the running padded sum of the sizes.
  // Containers grow as entries are read (a count is only a claim until the bytes are there).
  file->tensors_.reserve(std::min<uint64_t>(n_tensors, kMaxReserve));
  uint64_t expected_offset = 0;
  std::vector<uint64_t> info_at;
  info_at.reserve(std::min<uint64_t>(n_tensors, kMaxReserve));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    info_at.push_back(pos_);
    GgufTensorInfo& info = file->tensors_.emplace_back();
    KVASIR_RETURN_IF_ERROR(ReadTensorInfo(&info));
    auto [it, inserted] = file->tensor_index_.emplace(info.name, i);
    if (!inserted) {
      return Error(info_at[i], absl::StrCat("duplicate tensor name '", info.name, "'"));
    }
    if (info.offset != expected_offset) {
      return Error(pos_ - 8,
                   absl::StrCat("tensor '", info.name, "': offset ", info.offset, " should be ",
                                expected_offset, " (tensors are packed in order, aligned to ",
                                alignment, ")"));
    }
    uint64_t padded = 0;
    if (AddOverflows(info.size_bytes, alignment - 1, &padded) ||
        AddOverflows(expected_offset, padded / alignment * alignment, &expected_offset)) {
      return Error(info_at[i], absl::StrCat("tensor '", info.name, "': data size overflows"));
    }
  }

  // Data section: aligned after the infos when there are tensors.
  uint64_t data_start = pos_;
  if (n_tensors > 0) data_start = (pos_ + alignment - 1) / alignment * alignment;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo& info = file->tensors_[i];
    uint64_t end = 0;
    if (AddOverflows(data_start, info.offset, &end) || AddOverflows(end, info.size_bytes, &end) ||
        end > size_) {
      return Error(info_at[i],
                   absl::StrCat("tensor '", info.name, "': data [", info.offset, ", +",
                                info.size_bytes, ") at file byte ", data_start,
                                " + offset runs past the end of the file (", size_, " bytes)"));
    }
    info.data = data_ + data_start + info.offset;
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// GgufFile

absl::StatusOr<GgufFile> GgufFile::Parse(std::span<const uint8_t> bytes, std::string_view name) {
  GgufFile file;
  file.name_ = std::string(name);
  GgufParser parser(bytes, file.name_);
  KVASIR_RETURN_IF_ERROR(parser.Run(&file));
  return file;
}

absl::StatusOr<GgufFile> GgufFile::Open(const std::string& path) {
  KVASIR_ASSIGN_OR_RETURN(MappedFile map, MappedFile::Open(path));
  KVASIR_ASSIGN_OR_RETURN(GgufFile file, Parse(map.bytes(), path));
  // The mapping's address does not change when it moves, so the views stay valid.
  file.map_ = std::move(map);
  return file;
}

const GgufValue* GgufFile::Find(std::string_view key) const {
  auto it = metadata_index_.find(ToAbsl(key));
  return it == metadata_index_.end() ? nullptr : &metadata_[it->second].second;
}

std::optional<int64_t> GgufFile::GetInt(std::string_view key) const {
  const GgufValue* v = Find(key);
  return v ? v->AsInt() : std::nullopt;
}

std::optional<double> GgufFile::GetFloat(std::string_view key) const {
  const GgufValue* v = Find(key);
  return v ? v->AsFloat() : std::nullopt;
}

std::optional<bool> GgufFile::GetBool(std::string_view key) const {
  const GgufValue* v = Find(key);
  return v ? v->AsBool() : std::nullopt;
}

std::optional<std::string_view> GgufFile::GetString(std::string_view key) const {
  const GgufValue* v = Find(key);
  return v ? v->AsString() : std::nullopt;
}

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(ToAbsl(name));
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

// ---------------------------------------------------------------------------------------------
// GgufValue

std::optional<int64_t> GgufValue::AsInt() const {
  if (type_ == GgufValueType::kUint64) {
    if (u_ > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(u_);
  }
  if (!IsIntegerType(type_)) return std::nullopt;
  return i_;
}

std::optional<double> GgufValue::AsFloat() const {
  if (type_ == GgufValueType::kFloat32 || type_ == GgufValueType::kFloat64) return f_;
  if (type_ == GgufValueType::kUint64) return static_cast<double>(u_);
  if (type_ == GgufValueType::kBool || !IsIntegerType(type_)) return std::nullopt;
  return static_cast<double>(i_);
}

std::optional<bool> GgufValue::AsBool() const {
  if (type_ != GgufValueType::kBool) return std::nullopt;
  return i_ != 0;
}

std::optional<std::string_view> GgufValue::AsString() const {
  if (type_ != GgufValueType::kString) return std::nullopt;
  return std::string_view(reinterpret_cast<const char*>(bytes_), nbytes_);
}

std::optional<std::vector<std::string_view>> GgufValue::AsStringArray() const {
  if (type_ != GgufValueType::kArray || array_type_ != GgufValueType::kString) {
    return std::nullopt;
  }
  // The parser validated every length against these bytes.
  std::vector<std::string_view> out;
  out.reserve(array_size_);
  const uint8_t* p = bytes_;
  for (uint64_t i = 0; i < array_size_; ++i) {
    const uint64_t len = Load<uint64_t>(p);
    out.emplace_back(reinterpret_cast<const char*>(p + 8), len);
    p += 8 + len;
  }
  return out;
}

std::optional<std::vector<int64_t>> GgufValue::AsIntArray() const {
  if (type_ != GgufValueType::kArray || !IsIntegerType(array_type_)) return std::nullopt;
  const uint64_t elem = ScalarSize(array_type_);
  std::vector<int64_t> out(array_size_);
  for (uint64_t i = 0; i < array_size_; ++i) {
    if (!DecodeInt(array_type_, bytes_ + i * elem, &out[i])) return std::nullopt;
  }
  return out;
}

std::optional<std::vector<float>> GgufValue::AsFloatArray() const {
  if (type_ != GgufValueType::kArray || array_type_ == GgufValueType::kBool ||
      ScalarSize(array_type_) == 0) {
    return std::nullopt;
  }
  const uint64_t elem = ScalarSize(array_type_);
  std::vector<float> out(array_size_);
  for (uint64_t i = 0; i < array_size_; ++i) {
    double d = 0;
    DecodeFloat(array_type_, bytes_ + i * elem, &d);
    out[i] = static_cast<float>(d);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

int64_t GgufTensorInfo::num_elements() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;  // validated at parse time not to overflow
  return n;
}

bool GgmlTypeSize(uint32_t ggml_type, int64_t* block_size, int64_t* block_bytes) {
  if (ggml_type >= kGgmlTypeCount || kGgmlTypes[ggml_type].block_size == 0) return false;
  *block_size = kGgmlTypes[ggml_type].block_size;
  *block_bytes = kGgmlTypes[ggml_type].block_bytes;
  return true;
}

std::string GgmlTypeName(uint32_t ggml_type) {
  if (ggml_type >= kGgmlTypeCount || kGgmlTypes[ggml_type].block_size == 0) {
    return absl::StrCat("type", ggml_type);
  }
  return kGgmlTypes[ggml_type].name;
}

}  // namespace kvasir::model
