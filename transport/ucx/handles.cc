// RAII owners of UCP handles (see handles.h).
#include "transport/ucx/handles.h"

#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "transport/ucx/ucs_status.h"

namespace kvasir::transport::ucx {

absl::StatusOr<std::unique_ptr<UcxContext>> UcxContext::Create(const ContextOptions& options) {
  ucp_config_t* config = nullptr;
  if (ucs_status_t s = ucp_config_read(nullptr, nullptr, &config); s != UCS_OK) {
    return UcsStatus(s, "ucp_config_read");
  }
  if (!options.tls.empty()) {
    if (ucs_status_t s = ucp_config_modify(config, "TLS", options.tls.c_str()); s != UCS_OK) {
      ucp_config_release(config);
      return UcsStatus(s, absl::StrCat("UCX_TLS=", options.tls));
    }
  }
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME;
  params.features = UCP_FEATURE_RMA | UCP_FEATURE_AM;
  if (options.wakeup) params.features |= UCP_FEATURE_WAKEUP;
  params.name = "kvasir";
  ucp_context_h context = nullptr;
  ucs_status_t s = ucp_init(&params, config, &context);
  ucp_config_release(config);
  if (s != UCS_OK) return UcsStatus(s, absl::StrCat("ucp_init (UCX_TLS=", options.tls, ")"));
  ucp_context_attr_t attr{};
  attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
  uint64_t memory_types = uint64_t{1} << UCS_MEMORY_TYPE_HOST;
  if (ucp_context_query(context, &attr) == UCS_OK) memory_types = attr.memory_types;
  std::string tls = options.tls;
  if (tls.empty()) {
    const char* env = std::getenv("UCX_TLS");
    tls = env != nullptr ? env : "all";
  }
  return std::unique_ptr<UcxContext>(new UcxContext(context, memory_types, std::move(tls)));
}

UcxContext::~UcxContext() { ucp_cleanup(context_); }

bool UcxContext::SupportsMemoryType(ucs_memory_type_t type) const {
  return (memory_types_ >> type) & 1;
}

absl::StatusOr<std::unique_ptr<UcxWorker>> UcxWorker::Create(UcxContext& context) {
  ucp_worker_params_t params{};
  params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  params.thread_mode = UCS_THREAD_MODE_SINGLE;
  ucp_worker_h worker = nullptr;
  if (ucs_status_t s = ucp_worker_create(context.get(), &params, &worker); s != UCS_OK) {
    return UcsStatus(s, "ucp_worker_create");
  }
  ucp_address_t* address = nullptr;
  size_t length = 0;
  if (ucs_status_t s = ucp_worker_get_address(worker, &address, &length); s != UCS_OK) {
    ucp_worker_destroy(worker);
    return UcsStatus(s, "ucp_worker_get_address");
  }
  std::string bytes(reinterpret_cast<const char*>(address), length);
  ucp_worker_release_address(worker, address);
  return std::unique_ptr<UcxWorker>(new UcxWorker(worker, std::move(bytes)));
}

UcxWorker::~UcxWorker() { ucp_worker_destroy(worker_); }

absl::StatusOr<int> UcxWorker::EventFd() const {
  int fd = -1;
  if (ucs_status_t s = ucp_worker_get_efd(worker_, &fd); s != UCS_OK) {
    return UcsStatus(s, "ucp_worker_get_efd");
  }
  return fd;
}

absl::StatusOr<bool> UcxWorker::Arm() {
  const ucs_status_t s = ucp_worker_arm(worker_);
  if (s == UCS_OK) return true;
  if (s == UCS_ERR_BUSY) return false;
  return UcsStatus(s, "ucp_worker_arm");
}

absl::StatusOr<std::unique_ptr<UcxEndpoint>> UcxEndpoint::Create(UcxWorker& worker,
                                                                 std::string_view remote_address,
                                                                 bool peer_errors,
                                                                 ucp_err_handler_cb_t on_error,
                                                                 void* arg) {
  ucp_ep_params_t params{};
  params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER;
  params.address = reinterpret_cast<const ucp_address_t*>(remote_address.data());
  params.err_mode = peer_errors ? UCP_ERR_HANDLING_MODE_PEER : UCP_ERR_HANDLING_MODE_NONE;
  params.err_handler.cb = on_error;
  params.err_handler.arg = arg;
  ucp_ep_h ep = nullptr;
  if (ucs_status_t s = ucp_ep_create(worker.get(), &params, &ep); s != UCS_OK) {
    return UcsStatus(s, "ucp_ep_create");
  }
  return std::unique_ptr<UcxEndpoint>(new UcxEndpoint(worker, ep));
}

void UcxEndpoint::Close(bool force, absl::Duration timeout) {
  if (ep_ == nullptr) return;
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
  ucs_status_ptr_t request = ucp_ep_close_nbx(ep_, &param);
  ep_ = nullptr;
  if (request == nullptr) return;
  if (UCS_PTR_IS_ERR(request)) {
    KVASIR_LOG_SUBSYS(DEBUG, kTransport, "ucp_ep_close_nbx: %s",
                      ucs_status_string(UCS_PTR_STATUS(request)));
    return;
  }
  const absl::Time deadline = absl::Now() + timeout;
  ucs_status_t s = UCS_INPROGRESS;
  while ((s = ucp_request_check_status(request)) == UCS_INPROGRESS && absl::Now() < deadline) {
    worker_.Progress();
  }
  if (s == UCS_INPROGRESS) {
    KVASIR_LOG_SUBSYS(WARN, kTransport, "ucx endpoint close did not finish within %s",
                      absl::FormatDuration(timeout));
  }
  ucp_request_free(request);
}

UcxEndpoint::~UcxEndpoint() { Close(/*force=*/false); }

std::string UcxEndpoint::Describe() const {
  if (ep_ == nullptr) return "closed";
  char* buffer = nullptr;
  size_t size = 0;
  FILE* stream = open_memstream(&buffer, &size);
  if (stream == nullptr) return "?";
  ucp_ep_print_info(ep_, stream);
  std::fclose(stream);
  std::string text(buffer, size);
  std::free(buffer);
  return text;
}

absl::StatusOr<std::unique_ptr<UcxMemory>> UcxMemory::Map(UcxContext& context,
                                                          std::span<std::byte> memory,
                                                          ucs_memory_type_t type) {
  if (memory.empty()) return absl::InvalidArgumentError("cannot register an empty region");
  if (!context.SupportsMemoryType(type)) {
    return absl::FailedPreconditionError(
        absl::StrCat("this UCX build cannot move memory of type ", ucs_memory_type_names[type]));
  }
  ucp_mem_map_params_t params{};
  params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                      UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
  params.address = memory.data();
  params.length = memory.size();
  params.memory_type = type;
  ucp_mem_h memh = nullptr;
  if (ucs_status_t s = ucp_mem_map(context.get(), &params, &memh); s != UCS_OK) {
    return UcsStatus(s, "ucp_mem_map");
  }
  return std::unique_ptr<UcxMemory>(new UcxMemory(context, memh, memory));
}

absl::StatusOr<std::unique_ptr<UcxMemory>> UcxMemory::Allocate(UcxContext& context, size_t size) {
  if (size == 0) return absl::InvalidArgumentError("cannot allocate an empty region");
  ucp_mem_map_params_t params{};
  params.field_mask = UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_FLAGS;
  params.length = size;
  params.flags = UCP_MEM_MAP_ALLOCATE;
  ucp_mem_h memh = nullptr;
  if (ucs_status_t s = ucp_mem_map(context.get(), &params, &memh); s != UCS_OK) {
    return UcsStatus(s, "ucp_mem_map(allocate)");
  }
  ucp_mem_attr_t attr{};
  attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
  if (ucs_status_t s = ucp_mem_query(memh, &attr); s != UCS_OK) {
    ucp_mem_unmap(context.get(), memh);
    return UcsStatus(s, "ucp_mem_query");
  }
  std::span<std::byte> memory(static_cast<std::byte*>(attr.address), size);
  return std::unique_ptr<UcxMemory>(new UcxMemory(context, memh, memory));
}

UcxMemory::~UcxMemory() {
  if (ucs_status_t s = ucp_mem_unmap(context_.get(), memh_); s != UCS_OK) {
    KVASIR_LOG_SUBSYS(WARN, kTransport, "ucp_mem_unmap: %s", ucs_status_string(s));
  }
}

absl::StatusOr<std::string> UcxMemory::PackKey() const {
  void* buffer = nullptr;
  size_t size = 0;
  if (ucs_status_t s = ucp_rkey_pack(context_.get(), memh_, &buffer, &size); s != UCS_OK) {
    return UcsStatus(s, "ucp_rkey_pack");
  }
  std::string key(static_cast<const char*>(buffer), size);
  ucp_rkey_buffer_release(buffer);
  return key;
}

absl::StatusOr<std::unique_ptr<UcxRemoteKey>> UcxRemoteKey::Unpack(UcxEndpoint& ep,
                                                                   std::string_view packed) {
  ucp_rkey_h rkey = nullptr;
  if (ucs_status_t s = ucp_ep_rkey_unpack(ep.get(), packed.data(), &rkey); s != UCS_OK) {
    return UcsStatus(s, "ucp_ep_rkey_unpack");
  }
  return std::unique_ptr<UcxRemoteKey>(new UcxRemoteKey(rkey));
}

UcxRemoteKey::~UcxRemoteKey() { ucp_rkey_destroy(rkey_); }

}  // namespace kvasir::transport::ucx
