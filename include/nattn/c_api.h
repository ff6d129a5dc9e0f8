/* Layer: public API. A plain C ABI over api.h, for foreign-function bindings (the Python
 * package loads it with ctypes, so one build serves every torch version). Every function
 * returns a StatusCode value (0 = ok) and, on error, writes a NUL-terminated message into
 * `err` (at most `err_len` bytes). Tensor slots are fixed positions in an array. */
#ifndef NATTN_C_API_H_
#define NATTN_C_API_H_
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define NATTN_C_MAX_DIMS 6

typedef struct nattn_tensor {
  void* data;
  int32_t dtype; /* nattn::DType */
  int32_t ndim;  /* 0 = absent */
  int64_t shape[NATTN_C_MAX_DIMS];
  int64_t stride[NATTN_C_MAX_DIMS];
  int32_t device_type; /* nattn::DeviceType */
  int32_t device_index;
} nattn_tensor;

typedef struct nattn_problem {
  int32_t rank;
  int32_t is_causal[3];
  int64_t batch;
  int64_t extent[3];
  int64_t heads_q, heads_kv, head_dim, head_dim_v;
  int64_t kernel_size[3], stride[3], dilation[3];
  int32_t has_scale;
  double scale;
  int64_t num_additional;
  /* nattn::Placement (SPEC.md "Placed boxes"); all zeros = not placed. A 0 in global_extent or
   * key_extent means the query extent on that axis. k/v are [B, key extent.., Hkv, *]. The
   * attention calls read key_extent[0] alone (the number of keys Nk; 0 = N). */
  int64_t global_extent[3];
  int64_t query_origin[3];
  int64_t key_origin[3];
  int64_t key_extent[3];
} nattn_problem;

#define NATTN_C_MAX_CONFIG_IDS 4

typedef struct nattn_options {
  int32_t backend; /* nattn::BackendKind */
  int32_t deterministic;
  void* stream;
  /* nattn::KernelChoice: family NULL or "" = automatic; config_ids -1 = unused; tiles 0 = chosen */
  const char* family;
  int32_t config_ids[NATTN_C_MAX_CONFIG_IDS];
  int32_t own_tile[3];
  int32_t walk_tile[3];
  /* nattn::WorkspaceAllocator: both NULL = the backend allocates (its own pool per device,
   * which keeps its memory between calls: nattn_release_cached_workspace) */
  void* (*workspace_allocate)(size_t bytes, void* ctx);
  void (*workspace_release)(void* ptr, void* ctx);
  void* workspace_ctx;
} nattn_options;

/* Forward slots: q k v additional_k additional_v out lse */
enum {
  NATTN_FWD_Q,
  NATTN_FWD_K,
  NATTN_FWD_V,
  NATTN_FWD_AK,
  NATTN_FWD_AV,
  NATTN_FWD_OUT,
  NATTN_FWD_LSE,
  NATTN_FWD_COUNT
};
/* Backward slots: q k v ak av out lse dout dlse dq dk dv dak dav */
enum {
  NATTN_BWD_Q,
  NATTN_BWD_K,
  NATTN_BWD_V,
  NATTN_BWD_AK,
  NATTN_BWD_AV,
  NATTN_BWD_OUT,
  NATTN_BWD_LSE,
  NATTN_BWD_DOUT,
  NATTN_BWD_DLSE,
  NATTN_BWD_DQ,
  NATTN_BWD_DK,
  NATTN_BWD_DV,
  NATTN_BWD_DAK,
  NATTN_BWD_DAV,
  NATTN_BWD_COUNT
};

int nattn_forward(const nattn_problem* p, const nattn_tensor* tensors, const nattn_options* o, char* err,
                  size_t err_len);
int nattn_backward(const nattn_problem* p, const nattn_tensor* tensors, const nattn_options* o, char* err,
                   size_t err_len);
/* Dense attention: p->rank must be 1, extent[0] = N (queries), key_extent[0] = Nk (keys; 0 = N),
 * is_causal[0] (query i sees keys j <= i); window and other placement fields are ignored. */
int nattn_attention_forward(const nattn_problem* p, const nattn_tensor* tensors, const nattn_options* o, char* err,
                            size_t err_len);
int nattn_attention_backward(const nattn_problem* p, const nattn_tensor* tensors, const nattn_options* o, char* err,
                             size_t err_len);
/* The plan a call would run, as JSON (nattn::Plan::to_json) into plan_json (at most plan_len
 * bytes, NUL included); nothing runs and no tensor is read. Same validation as the calls. */
int nattn_explain_forward(const nattn_problem* p, const nattn_tensor* tensors, const nattn_options* o, char* plan_json,
                          size_t plan_len, char* err, size_t err_len);
int nattn_explain_backward(const nattn_problem* p, const nattn_tensor* tensors, const nattn_options* o, char* plan_json,
                           size_t plan_len, char* err, size_t err_len);
int nattn_explain_attention_forward(const nattn_problem* p, const nattn_tensor* tensors, const nattn_options* o,
                                    char* plan_json, size_t plan_len, char* err, size_t err_len);
int nattn_explain_attention_backward(const nattn_problem* p, const nattn_tensor* tensors, const nattn_options* o,
                                     char* plan_json, size_t plan_len, char* err, size_t err_len);
/* nattn::release_cached_workspace: the memory the library's workspace pools keep between calls
 * (calls without an allocator) back to the system. No nattn call may be in flight. */
int nattn_release_cached_workspace(char* err, size_t err_len);
/* The kernel configuration table as a JSON list of nattn::KernelConfigInfo objects. */
int nattn_kernel_configs(char* json, size_t json_len, char* err, size_t err_len);
/* Validation alone (no tensors touched): the same checks and messages as the calls above. */
int nattn_check_problem(const nattn_problem* p, char* err, size_t err_len);
/* Merges `n` partials: outs/lses arrays of n views each. */
int nattn_merge(int32_t n, const nattn_tensor* outs, const nattn_tensor* lses, const nattn_tensor* out,
                const nattn_tensor* lse, char* err, size_t err_len);
/* nattn_merge with options: o->stream orders the merge of CUDA tensors (torch's current
 * stream); backend and kernel choice do not apply. o may be NULL. */
int nattn_merge_on_stream(int32_t n, const nattn_tensor* outs, const nattn_tensor* lses, const nattn_tensor* out,
                          const nattn_tensor* lse, const nattn_options* o, char* err, size_t err_len);
/* Validation without memory: the checks and messages of nattn_forward / nattn_backward (and,
 * with dense != 0, of nattn_attention_forward / _backward) and nattn_merge, except those that
 * need the tensors' memory (null data pointers, outputs sharing memory), so `data` may be NULL.
 * Shapes, dtypes, devices, strides, 64-bit offsets and the rules of SPEC.md are all checked.
 * For bindings that reject a call before allocating its outputs, or that hold tensors with no
 * memory at all (torch's fake tensors while tracing). Nothing runs; no backend is chosen. */
int nattn_check_forward_shapes(const nattn_problem* p, const nattn_tensor* tensors, int32_t dense, char* err,
                               size_t err_len);
int nattn_check_backward_shapes(const nattn_problem* p, const nattn_tensor* tensors, int32_t dense, char* err,
                                size_t err_len);
int nattn_check_merge_shapes(int32_t n, const nattn_tensor* outs, const nattn_tensor* lses, const nattn_tensor* out,
                             const nattn_tensor* lse, char* err, size_t err_len);
/* The layout of a struct of this header as the library was compiled, for bindings that mirror
 * the structs (Python's ctypes) to compare at load time. `name`: "nattn_tensor",
 * "nattn_problem" or "nattn_options". Writes sizeof into *size, the number of fields into
 * *num_fields and, for the first max_fields fields in declaration order, offsetof into
 * offsets[i] and sizeof into sizes[i]; `names` receives the field names, comma-separated
 * (NUL-terminated, at most names_len bytes). */
int nattn_struct_layout(const char* name, int64_t* size, int32_t* num_fields, int64_t* offsets, int64_t* sizes,
                        int32_t max_fields, char* names, size_t names_len, char* err, size_t err_len);
/* Host-time tracing of calls (nattn/host_trace.h). action 0: off; 1: on, counts reset; 2: write
 * the counts as JSON into `json` (json_len bytes; too small is an error saying the size needed).
 * Actions 0 and 1 ignore json. */
int nattn_host_trace(int32_t action, char* json, size_t json_len, char* err, size_t err_len);
/* Backend `kind`: 1 if available; otherwise 0 and the reason in `reason`. */
int nattn_backend_available(int32_t kind, char* reason, size_t reason_len);
const char* nattn_version(void);

#ifdef __cplusplus
}
#endif
#endif /* NATTN_C_API_H_ */
