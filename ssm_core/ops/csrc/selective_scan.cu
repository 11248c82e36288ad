// Selective scan (S6) in CUDA C++: forward, backward, and the segment passes that split long sequences.
//
// Device code only, compiled at first use with NVRTC (the runtime compiler that ships in PyTorch's CUDA wheels) by
// ssm_core/ops/scan_cuda.py, which also launches the kernels through the CUDA driver API: no CUDA toolkit, host
// compiler or PyTorch header is needed. Each (element type, lanes per channel) pair is its own small program,
// instantiated by name (NVRTC name expressions). Design, byte counts and measurements:
// benchmarks/NOTES_gpu_scan.md ("Version 3").
//
// Layout: a block of NT threads owns CH = NT / TPC channels of one (batch, group); a channel's dstate states are
// split over TPC consecutive lanes, NPT states each, held in registers. The block stages SC time steps of u,
// softplus(delta + bias), B and C in shared memory (coalesced global loads), then every thread walks those steps
// sequentially: per state one exp2, two FMAs and a multiply, no scan tree. y = <C, h> is summed over the TPC lanes
// with shuffles. Long sequences are cut into segments (blockIdx.y): a pass computes each segment's end state from
// zero, a tiny carry pass chains them, and the main pass reruns each segment from its true start state.
// The forward keeps the state at every SC-step chunk boundary; the backward walks the chunks in reverse,
// recomputes the states of SUB steps at a time into registers, runs the adjoint recurrence and forms all
// gradients; dB and dC are summed over the block's channels (warp shuffles, then shared memory) before one
// global atomic add per (state, 4 steps).
// Packed sequences (VARLEN kernels, batch 1): p.first_of / p.last_of name the sequence each step starts / ends
// (-1: none). A sequence's first step decays its initial state h0[i] (or 0) instead of the running state, so no
// state (forward) and no adjoint (backward) crosses a boundary, wherever it falls in a chunk or segment; its last
// step writes the sequence's last state and, in the backward, takes in that state's gradient; the first step
// gives dL/dh0[i]. The carry drops what comes before a segment that holds a start. The unpacked kernels
// (VARLEN false) are unchanged.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

// Mirrored field by field in scan_cuda.py (_Params): 64-bit integers and pointers only. Passed by value to every
// kernel; scan_cuda.py checks its size against ssm_scan_params_size.
struct Params {
    long long batch, dim, seqlen, dstate, n_groups, dim_per_group;
    long long n_seg, seg_chunks, n_chunks, softplus;
    long long vec;           // 1: every (batch, dim, seqlen) / (..., seqlen) tensor is 16-byte aligned with seqlen % 8 == 0
    const void *u, *delta, *z, *dout, *B, *C;
    const float *A, *D, *bias;
    const float *start;      // fwd: (batch, dim, n_seg, dstate) state before each segment; null = zeros
    const float *end_grad;   // bwd: (batch, dim, n_seg, dstate) gradient into the state after each segment; null = zeros
    void *out;
    float *chunk_states;     // (batch, dim, n_chunks + 1, dstate): state before each chunk, then the final state
    float *last_state;       // (batch, dim, dstate)
    float *seg_state;        // segment passes: (batch, dim, n_seg, dstate)
    float *seg_dtsum;        // segment passes: (batch, dim, n_seg), the sum of the steps over the segment
    void *du, *ddelta, *dz;
    float *dA, *dB, *dC, *dD, *dbias, *dstart;
    // VARLEN kernels (n packed sequences, batch 1): per step the sequence it starts / ends, else -1 (seqlen,);
    // initial states, last states, their gradients (n, dim, dstate), each null when not wanted
    const int *first_of, *last_of;
    const float *h0, *dlast;
    float *seq_last, *dh0;
};

namespace ssm_scan {

constexpr int NPT = 4;        // states per thread
constexpr int NT = 128;       // threads per block
constexpr int SC = 64;        // steps staged in shared memory at once = interval of the kept states
constexpr int ROW = SC + 1;   // padded row: lanes of different channels read one column without bank conflicts
constexpr int SUB = 8;        // steps whose states the backward holds in registers
constexpr int NW = NT / 32;   // warps per block
constexpr float LOG2E = 1.4426950408889634f;
constexpr unsigned FULL = 0xffffffffu;


__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ float ex2(float x) {  // the hardware exp2 (MUFU.EX2), ~2 ulp
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
// torch.nn.functional.softplus (threshold 20) and its derivative.
__device__ __forceinline__ float softplus(float x) { return x > 20.f ? x : log1pf(expf(x)); }
__device__ __forceinline__ float softplus_grad(float x) { return x > 20.f ? 1.f : 1.f / (1.f + expf(-x)); }

// Which channels a block owns: d0 = first channel, nvalid = how many exist (the last block of a group may be short);
// and this thread's place: channel c of the block (d in the tensor; past nvalid, a clamped stand-in that computes
// on zeros and writes nothing), lane j of the channel's TPC lanes.
struct Coords {
    int b, g, d0, nvalid;
    int c, j, d;
    bool valid;
};
template <int TPC>
__device__ __forceinline__ Coords block_coords(const Params& p) {
    constexpr int CH = NT / TPC;
    const int dpg = (int)p.dim_per_group;
    const int n_dblk = (dpg + CH - 1) / CH;
    const int dblk = blockIdx.x % n_dblk, bg = blockIdx.x / n_dblk;
    Coords c;
    c.g = bg % (int)p.n_groups;
    c.b = bg / (int)p.n_groups;
    c.d0 = c.g * dpg + dblk * CH;
    c.nvalid = min(CH, dpg - dblk * CH);
    c.c = threadIdx.x / TPC;
    c.j = threadIdx.x % TPC;
    c.valid = c.c < c.nvalid;
    c.d = c.d0 + (c.valid ? c.c : 0);
    return c;
}

// 16-byte vectors: V elements of T. elem/pack convert with compile-time lane indices (registers, no local memory).
template <typename T> struct Vec { static constexpr int V = 16 / sizeof(T); };
__device__ __forceinline__ unsigned word(const uint4& w, int i) { return i == 0 ? w.x : i == 1 ? w.y : i == 2 ? w.z : w.w; }
template <typename T> __device__ __forceinline__ float elem(const uint4& w, int q);
template <> __device__ __forceinline__ float elem<float>(const uint4& w, int q) { return __uint_as_float(word(w, q)); }
template <> __device__ __forceinline__ float elem<__nv_bfloat16>(const uint4& w, int q) {
    const unsigned x = word(w, q >> 1);
    return __uint_as_float((q & 1) ? (x & 0xffff0000u) : (x << 16));
}
template <> __device__ __forceinline__ float elem<__half>(const uint4& w, int q) {
    const unsigned x = word(w, q >> 1);
    return __half2float(__ushort_as_half((unsigned short)((q & 1) ? (x >> 16) : (x & 0xffffu))));
}
__device__ __forceinline__ unsigned bits16(__nv_bfloat16 x) { return __bfloat16_as_ushort(x); }
__device__ __forceinline__ unsigned bits16(__half x) { return __half_as_ushort(x); }
template <typename T> __device__ __forceinline__ uint4 pack(const float* v) {
    if constexpr (sizeof(T) == 4) {
        return make_uint4(__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]), __float_as_uint(v[3]));
    } else {
        unsigned w[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) w[i] = bits16(from_f<T>(v[2 * i])) | (bits16(from_f<T>(v[2 * i + 1])) << 16);
        return make_uint4(w[0], w[1], w[2], w[3]);
    }
}

// Stages a (ROWS, SC) tile of x: (rows, seqlen), rows row0.., steps t0..; calls put(r, t, value, in_range) for every
// element (value 0 where not in range: rows >= nvalid or steps >= L). Each thread owns whole 16-byte vectors and
// issues all its loads before the first put: a loop that stored each value to shared memory before the next load
// waited out every load's latency in turn (the compiler cannot move a load above a possibly aliasing store).
template <typename T, int ROWS, typename F>
__device__ __forceinline__ void stage(const T* x, long long row0, int nvalid, long long t0, long long L, bool vec,
                                      F put) {
    constexpr int V = Vec<T>::V, PER = (ROWS * SC + NT * V - 1) / (NT * V);
    if (vec && t0 + SC <= L) {
        uint4 raw[PER];
#pragma unroll
        for (int m = 0; m < PER; ++m) {
            const int e = (threadIdx.x + m * NT) * V, r = e / SC, t = e % SC;
            raw[m] = (e < ROWS * SC && r < nvalid) ? __ldg(reinterpret_cast<const uint4*>(x + (row0 + r) * L + t0 + t))
                                                   : make_uint4(0u, 0u, 0u, 0u);
        }
#pragma unroll
        for (int m = 0; m < PER; ++m) {
            const int e = (threadIdx.x + m * NT) * V, r = e / SC, t = e % SC;
            if (e >= ROWS * SC) break;
#pragma unroll
            for (int q = 0; q < V; ++q) put(r, t + q, elem<T>(raw[m], q), r < nvalid);
        }
    } else {  // the last, partial chunk or unaligned tensors: element by element
#pragma unroll 1
        for (int i = threadIdx.x; i < ROWS * SC; i += NT) {
            const int r = i / SC, t = i % SC;
            const bool in = r < nvalid && t0 + t < L;
            put(r, t, in ? to_f(x[(row0 + r) * L + t0 + t]) : 0.f, in);
        }
    }
}

// For each element (r, t) of the block's (CH, SC) tile that exists, in 16-byte vectors where possible:
// out[r, t] = f(r, t, in1, in2) with in1/in2 the elements of optional extra inputs (null: 0) at the same offset.
// With rowsum, also adds each row's sum of the written values (before rounding to T) into rowsum[r].
template <typename T, int CH, typename F>
__device__ __forceinline__ void write_tile(T* out, const T* x1, const T* x2, long long row0, int nvalid, long long t0,
                                           long long L, bool vec, float* rowsum, F f) {
    constexpr int V = Vec<T>::V, PER = (CH * SC + NT * V - 1) / (NT * V);
    const int lane = threadIdx.x % 32;
    if (vec && t0 + SC <= L) {
        uint4 r1[PER], r2[PER];
#pragma unroll
        for (int m = 0; m < PER; ++m) {
            const int e = (threadIdx.x + m * NT) * V, r = e / SC, t = e % SC;
            const bool ok = e < CH * SC && r < nvalid;
            const long long off = (row0 + r) * L + t0 + t;
            r1[m] = (ok && x1) ? __ldg(reinterpret_cast<const uint4*>(x1 + off)) : make_uint4(0u, 0u, 0u, 0u);
            r2[m] = (ok && x2) ? __ldg(reinterpret_cast<const uint4*>(x2 + off)) : make_uint4(0u, 0u, 0u, 0u);
        }
#pragma unroll
        for (int m = 0; m < PER; ++m) {
            const int e = (threadIdx.x + m * NT) * V, r = e / SC, t = e % SC;
            const bool ok = e < CH * SC && r < nvalid;
            float v[V], sum = 0.f;
            if (ok) {
#pragma unroll
                for (int q = 0; q < V; ++q) {
                    v[q] = f(r, t + q, elem<T>(r1[m], q), elem<T>(r2[m], q));
                    sum += v[q];
                }
                *reinterpret_cast<uint4*>(out + (row0 + r) * L + t0 + t) = pack<T>(v);
            }
            if (rowsum) {  // a row's SC / V vectors lie on consecutive lanes
#pragma unroll
                for (int off = SC / V / 2; off > 0; off >>= 1) sum += __shfl_xor_sync(FULL, sum, off);
                if (ok && lane % (SC / V) == 0) atomicAdd(rowsum + r, sum);
            }
        }
    } else {  // one element per lane; a warp's 32 elements lie in one row
#pragma unroll 1
        for (int i = threadIdx.x; i < CH * SC; i += NT) {
            const int r = i / SC, t = i % SC;
            const bool ok = r < nvalid && t0 + t < L;
            float v = 0.f;
            if (ok) {
                const long long off = (row0 + r) * L + t0 + t;
                v = f(r, t, x1 ? to_f(x1[off]) : 0.f, x2 ? to_f(x2[off]) : 0.f);
                out[off] = from_f<T>(v);
            }
            if (rowsum) {
#pragma unroll
                for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(FULL, v, off);
                if (lane == 0 && r < nvalid) atomicAdd(rowsum + r, v);
            }
        }
    }
}

__device__ __forceinline__ float silu(float x) { return x / (1.f + __expf(-x)); }

// Sums four keys over the TPC lanes of a channel with a transposing exchange (3 shuffles for TPC 4 instead of 8):
// returns the full sum of key `key` (lane j holds key (j / (TPC/4)) % 4; every lane holds a complete sum).
template <int TPC>
__device__ __forceinline__ float sum_lanes4(const float v[4], int j, int& key) {
    constexpr int H = TPC / 2, Q = TPC / 4;
    const bool hi = j & H, mid = j & Q;
    float a0 = hi ? v[2] : v[0], a1 = hi ? v[3] : v[1];
    a0 += __shfl_xor_sync(FULL, hi ? v[0] : v[2], H);
    a1 += __shfl_xor_sync(FULL, hi ? v[1] : v[3], H);
    float s = mid ? a1 : a0;
    s += __shfl_xor_sync(FULL, mid ? a0 : a1, Q);
#pragma unroll
    for (int off = Q / 2; off > 0; off >>= 1) s += __shfl_xor_sync(FULL, s, off);
    key = (hi ? 2 : 0) + (mid ? 1 : 0);
    return s;
}

template <int TPC>
__device__ __forceinline__ float sum_lanes(float v) {  // over the TPC lanes of one channel
#pragma unroll
    for (int off = TPC / 2; off > 0; off >>= 1) v += __shfl_xor_sync(FULL, v, off);
    return v;
}

template <typename T>
__device__ __forceinline__ float delta_to_dt(const Params& p, float x, int d) {
    if (p.bias) x += p.bias[d];
    return p.softplus ? softplus(x) : x;
}

// Stages the chunk's dt = softplus(delta + bias) and u (rows), and B, C transposed to (SC, NP): a step's states are
// one float4 per lane.
template <typename T, int CH, int NP>
__device__ __forceinline__ void stage_inputs(const Params& p, const Coords& bc, float* s_dt, float* s_u, float* s_B,
                                             float* s_C, long long t0) {
    const long long L = p.seqlen, row0 = bc.b * p.dim + bc.d0;
    const long long bc_row = ((long long)bc.b * p.n_groups + bc.g) * p.dstate;
    const bool vec = p.vec;
    const float* bias = p.bias;
    const bool sp = p.softplus;
    const int d0 = bc.d0;
    stage<T, CH>(static_cast<const T*>(p.delta), row0, bc.nvalid, t0, L, vec, [&](int r, int t, float x, bool in) {
        if (bias) x += bias[d0 + r];
        s_dt[r * ROW + t] = in ? (sp ? softplus(x) : x) : 0.f;
    });
    if (s_u) stage<T, CH>(static_cast<const T*>(p.u), row0, bc.nvalid, t0, L, vec,
                          [&](int r, int t, float x, bool) { s_u[r * ROW + t] = x; });
    if (s_B) stage<T, NP>(static_cast<const T*>(p.B), bc_row, (int)p.dstate, t0, L, vec,
                          [&](int n, int t, float x, bool) { s_B[t * NP + n] = x; });
    if (s_C) stage<T, NP>(static_cast<const T*>(p.C), bc_row, (int)p.dstate, t0, L, vec,
                          [&](int n, int t, float x, bool) { s_C[t * NP + n] = x; });
}

// The chunk's sequence starts and ends (VARLEN kernels), after the block's other shared-memory tiles.
template <bool VARLEN>
__device__ __forceinline__ void stage_pack(const Params& p, int* s_first, int* s_last, long long t0) {
    if constexpr (VARLEN)
        for (int t = threadIdx.x; t < SC; t += NT) {
            const bool in = t0 + t < p.seqlen;
            s_first[t] = in ? p.first_of[t0 + t] : -1;
            s_last[t] = in ? p.last_of[t0 + t] : -1;
        }
}

// Offset of (sequence i, channel d, state n) in an (n_seq, dim, dstate) tensor.
__device__ __forceinline__ long long seq_at(const Params& p, int i, int d, int n) {
    return ((long long)i * p.dim + d) * p.dstate + n;
}

// The state a step decays: the running one, or at a sequence's first step (first >= 0) its initial state (0 if
// none). on: this lane's state exists (n < dstate in a valid channel).
__device__ __forceinline__ float state_before(const Params& p, float h, int first, int d, int n, bool on) {
    if (first < 0) return h;
    return (on && p.h0) ? p.h0[seq_at(p, first, d, n)] : 0.f;
}

__device__ __forceinline__ void unpack4(const float4& v, float (&a)[NPT]) {
    a[0] = v.x; a[1] = v.y; a[2] = v.z; a[3] = v.w;
}
// a[key] for a run-time key without indexing a register array (which would move it to local memory).
__device__ __forceinline__ float pick4(const float (&a)[4], int key) {
    return key == 0 ? a[0] : key == 1 ? a[1] : key == 2 ? a[2] : a[3];
}

// Blocks per SM the forward is built for. For 2-byte types 8, i.e. at most 64 registers: nvcc's front end reached
// that unasked, NVRTC's leaves more 64-bit address arithmetic and, unbounded, took 86 registers, so 5 blocks fitted
// per SM and the bf16 forward ran 40% slower (NOTES_gpu_scan.md, version 4.1). fp32 needs its ~120 registers: 0
// leaves it unbounded (a bound of 1 block made ptxas take more, 144).
template <typename T> constexpr int FWD_MIN_BLOCKS = sizeof(T) == 2 ? 8 : 0;

// Forward. SEGMENT_PASS: only each segment's end state from a zero start and its sum of steps (no output).
template <typename T, int TPC, bool SEGMENT_PASS, bool VARLEN>
__global__ void __launch_bounds__(NT, FWD_MIN_BLOCKS<T>) fwd_kernel(Params p) {
    constexpr int CH = NT / TPC, NP = TPC * NPT, G = 4;
    extern __shared__ float4 smem4[];
    float* s_dt = reinterpret_cast<float*>(smem4);
    float* s_u = s_dt + CH * ROW;          // u, then y + D u
    float* s_B = s_u + CH * ROW;
    float* s_C = s_B + SC * NP;
    int* s_first = reinterpret_cast<int*>(s_C + SC * NP);
    int* s_last = s_first + SC;

    const Coords bc = block_coords<TPC>(p);
    const int c = bc.c, j = bc.j, d = bc.d;
    const bool valid = bc.valid;
    const int seg = blockIdx.y;
    const long long L = p.seqlen, N = p.dstate, dim = p.dim;
    const long long row0 = bc.b * dim + bc.d0;                 // first row of u, delta, z, out
    const long long bd = bc.b * dim + d;
    const long long k_begin = seg * p.seg_chunks, k_end = min(p.n_chunks, k_begin + p.seg_chunks);

    float A2[NPT], h[NPT];
#pragma unroll
    for (int k = 0; k < NPT; ++k) {
        const int n = j * NPT + k;
        const bool on = valid && n < N;
        A2[k] = on ? p.A[d * N + n] * LOG2E : 0.f;
        h[k] = (!SEGMENT_PASS && on && p.start) ? p.start[(bd * p.n_seg + seg) * N + n] : 0.f;
    }
    const float Dd = (!SEGMENT_PASS && p.D) ? p.D[d] : 0.f;
    float dtsum = 0.f;

    for (long long kc = k_begin; kc < k_end; ++kc) {
        const long long t0 = kc * SC;
        if (!SEGMENT_PASS && p.chunk_states && valid) {
#pragma unroll
            for (int k = 0; k < NPT; ++k)
                if (j * NPT + k < N) p.chunk_states[(bd * (p.n_chunks + 1) + kc) * N + j * NPT + k] = h[k];
        }
        __syncthreads();  // the previous chunk's readers are done with shared memory
        stage_inputs<T, CH, NP>(p, bc, s_dt, s_u, s_B, SEGMENT_PASS ? nullptr : s_C, t0);
        stage_pack<VARLEN>(p, s_first, s_last, t0);
        __syncthreads();

        float* rdt = s_dt + c * ROW;
        float* ru = s_u + c * ROW;
#pragma unroll 1
        for (int t = 0; t < SC; t += G) {
            // All of the group's inputs first, then the recurrence; y is summed over the lanes once per group.
            float dt[G], uu[G], Bk[G][NPT], Ck[G][NPT], y[G];
            int first[G], last[G];
#pragma unroll
            for (int g = 0; g < G; ++g) {
                dt[g] = rdt[t + g];
                uu[g] = ru[t + g];
                first[g] = VARLEN ? s_first[t + g] : -1;
                last[g] = VARLEN ? s_last[t + g] : -1;
                unpack4(reinterpret_cast<const float4*>(s_B + (t + g) * NP)[j], Bk[g]);
                if (!SEGMENT_PASS) unpack4(reinterpret_cast<const float4*>(s_C + (t + g) * NP)[j], Ck[g]);
            }
#pragma unroll
            for (int g = 0; g < G; ++g) {
                const float dtu = dt[g] * uu[g];
                y[g] = 0.f;
#pragma unroll
                for (int k = 0; k < NPT; ++k) {
                    const int n = j * NPT + k;
                    const bool on = valid && n < N;
                    const float a = ex2(dt[g] * A2[k]);
                    if constexpr (VARLEN) {
                        h[k] = fmaf(a, state_before(p, h[k], first[g], d, n, on), dtu * Bk[g][k]);
                        if (!SEGMENT_PASS && last[g] >= 0 && on && p.seq_last) p.seq_last[seq_at(p, last[g], d, n)] = h[k];
                    } else {
                        h[k] = fmaf(a, h[k], dtu * Bk[g][k]);
                    }
                    if (!SEGMENT_PASS) y[g] = fmaf(Ck[g][k], h[k], y[g]);
                }
                if (SEGMENT_PASS) dtsum += dt[g];
            }
            if (!SEGMENT_PASS) {
                int key;
                const float ys = sum_lanes4<TPC>(y, j, key);
                // In place: every lane of this channel read the group's u before the shuffles.
                if ((j & (TPC / 4 - 1)) == 0) ru[t + key] = fmaf(Dd, pick4(uu, key), ys);
            }
        }
        if (!SEGMENT_PASS) {
            __syncthreads();
            write_tile<T, CH>(static_cast<T*>(p.out), static_cast<const T*>(p.z), nullptr, row0, bc.nvalid, t0, L,
                              p.vec, nullptr, [&](int r, int t, float zz, float) {
                                  const float y = s_u[r * ROW + t];
                                  return p.z ? y * silu(zz) : y;
                              });
        }
    }
    if (!valid) return;
    if (SEGMENT_PASS) {
#pragma unroll
        for (int k = 0; k < NPT; ++k)
            if (j * NPT + k < N) p.seg_state[(bd * p.n_seg + seg) * N + j * NPT + k] = h[k];
        if (j == 0) p.seg_dtsum[bd * p.n_seg + seg] = dtsum;
    } else if (seg == p.n_seg - 1) {
#pragma unroll
        for (int k = 0; k < NPT; ++k) {
            const int n = j * NPT + k;
            if (n >= N) continue;
            if (p.chunk_states) p.chunk_states[(bd * (p.n_chunks + 1) + p.n_chunks) * N + n] = h[k];
            if (p.last_state) p.last_state[bd * N + n] = h[k];
        }
    }
}

// Chains the segments. Forward: out[s] = state before segment s, from init (the initial state) and each segment's
// zero-start end state. Backward (reverse): out[s] = gradient into the state after segment s, from init (the
// gradient of the last state) and each segment's zero-start adjoint at its start. One thread per (row, state).
// seg_keep (packed sequences; null: all 1): 0 for a segment that holds a sequence start, whose decay it zeroes.
__global__ void carry_kernel(const float* A, const float* seg_state, const float* seg_dtsum, const float* seg_keep,
                             const float* init, float* out, long long rows, long long dim, long long N,
                             long long n_seg, int reverse) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= rows * N) return;
    const long long n = idx % N, bd = idx / N, d = bd % dim;
    const float a2 = A[d * N + n] * LOG2E;
    float h = init ? init[idx] : 0.f;
    for (long long i = 0; i < n_seg; ++i) {
        const long long s = reverse ? n_seg - 1 - i : i;
        out[(bd * n_seg + s) * N + n] = h;
        if (i < n_seg - 1) {
            const float a = exp2f(a2 * seg_dtsum[bd * n_seg + s]);
            h = fmaf(seg_keep ? a * seg_keep[s] : a, h, seg_state[(bd * n_seg + s) * N + n]);
        }
    }
}

// dy = dout * silu(z) (or dout), staged like the other rows.
template <typename T, int CH>
__device__ __forceinline__ void stage_dy(const Params& p, const Coords& bc, float* s_dy, long long t0) {
    const long long L = p.seqlen, row0 = bc.b * p.dim + bc.d0;
    stage<T, CH>(static_cast<const T*>(p.dout), row0, bc.nvalid, t0, L, p.vec,
                 [&](int r, int t, float x, bool) { s_dy[r * ROW + t] = x; });
    if (p.z) stage<T, CH>(static_cast<const T*>(p.z), row0, bc.nvalid, t0, L, p.vec,
                          [&](int r, int t, float x, bool) { s_dy[r * ROW + t] *= silu(x); });  // same thread, same element
}

// Backward segment pass: each segment's (but the first) adjoint at its start from a zero gradient at its end,
// and its sum of steps. g_t = C_t dy_t + a_{t+1} g_{t+1}; the result is a_start g_start.
template <typename T, int TPC, bool VARLEN>
__global__ void __launch_bounds__(NT) bwd_segment_kernel(Params p) {
    constexpr int CH = NT / TPC, NP = TPC * NPT, G = 4;
    extern __shared__ float4 smem4[];
    float* s_dt = reinterpret_cast<float*>(smem4);
    float* s_dy = s_dt + CH * ROW;
    float* s_C = s_dy + CH * ROW;
    int* s_first = reinterpret_cast<int*>(s_C + SC * NP);
    int* s_last = s_first + SC;

    const Coords bc = block_coords<TPC>(p);
    const int c = bc.c, j = bc.j, d = bc.d;
    const bool valid = bc.valid;
    const int seg = blockIdx.y + 1;
    const long long N = p.dstate;
    const long long bd = bc.b * p.dim + d;
    const long long k_begin = seg * p.seg_chunks, k_end = min(p.n_chunks, k_begin + p.seg_chunks);

    float A2[NPT], g[NPT], a_next[NPT];
#pragma unroll
    for (int k = 0; k < NPT; ++k) {
        const int n = j * NPT + k;
        A2[k] = (valid && n < N) ? p.A[d * N + n] * LOG2E : 0.f;
        g[k] = 0.f;
        a_next[k] = 1.f;
    }
    float dtsum = 0.f;
    for (long long kc = k_end - 1; kc >= k_begin; --kc) {
        const long long t0 = kc * SC;
        __syncthreads();
        stage_inputs<T, CH, NP>(p, bc, s_dt, nullptr, nullptr, s_C, t0);
        stage_dy<T, CH>(p, bc, s_dy, t0);
        stage_pack<VARLEN>(p, s_first, s_last, t0);
        __syncthreads();
        const float* rdt = s_dt + c * ROW;
        const float* rdy = s_dy + c * ROW;
#pragma unroll 1
        for (int t = SC - G; t >= 0; t -= G) {
            float dt[G], dy[G], Ck[G][NPT];
#pragma unroll
            for (int i = 0; i < G; ++i) {
                dt[i] = rdt[t + i];
                dy[i] = rdy[t + i];
                unpack4(reinterpret_cast<const float4*>(s_C + (t + i) * NP)[j], Ck[i]);
            }
#pragma unroll
            for (int i = G - 1; i >= 0; --i) {
                dtsum += dt[i];
#pragma unroll
                for (int k = 0; k < NPT; ++k) {
                    g[k] = fmaf(a_next[k], g[k], Ck[i][k] * dy[i]);
                    a_next[k] = ex2(dt[i] * A2[k]);
                    if constexpr (VARLEN) {
                        const int n = j * NPT + k;
                        const int last = s_last[t + i];
                        if (last >= 0 && valid && n < N && p.dlast) g[k] += p.dlast[seq_at(p, last, d, n)];
                        if (s_first[t + i] >= 0) a_next[k] = 0.f;  // nothing flows back before a sequence start
                    }
                }
            }
        }
    }
    if (!valid) return;
#pragma unroll
    for (int k = 0; k < NPT; ++k)
        if (j * NPT + k < N) p.seg_state[(bd * p.n_seg + seg) * N + j * NPT + k] = a_next[k] * g[k];
    if (j == 0) p.seg_dtsum[bd * p.n_seg + seg] = dtsum;
}

// Sums v[k] (state j*NPT + k of this lane's channel) over the warp's channels and stores the sums in
// dst[n] (one row of NP states). Lane = channel_in_warp * TPC + j. Transposing reduction: each exchange halves the
// keys a lane carries, so 4 keys over 8 channels cost 4 shuffles instead of 12.
template <int TPC>
__device__ __forceinline__ void sum_channels_store(const float v[NPT], float* dst, int lane, int j) {
    static_assert(TPC == 4 || TPC == 16, "sum_channels_store handles 4 or 16 lanes per channel");
    const bool hi = lane & 16;
    float k0 = hi ? v[2] : v[0], k1 = hi ? v[3] : v[1];
    k0 += __shfl_xor_sync(FULL, hi ? v[0] : v[2], 16);
    k1 += __shfl_xor_sync(FULL, hi ? v[1] : v[3], 16);
    const int base = j * NPT + (hi ? 2 : 0);
    if constexpr (TPC == 16) {  // two channels per warp: done
        dst[base] = k0;
        dst[base + 1] = k1;
    } else {                    // eight channels per warp
        const bool mid = lane & 8;
        float k = mid ? k1 : k0;
        k += __shfl_xor_sync(FULL, mid ? k0 : k1, 8);
        k += __shfl_xor_sync(FULL, k, 4);
        if (!(lane & 4)) dst[base + (mid ? 1 : 0)] = k;
    }
}

__device__ __forceinline__ void add4(float* p, float4 v, bool vector_ok) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (vector_ok) {
        atomicAdd(reinterpret_cast<float4*>(p), v);
        return;
    }
#endif
    atomicAdd(p, v.x);
    atomicAdd(p + 1, v.y);
    atomicAdd(p + 2, v.z);
    atomicAdd(p + 3, v.w);
}

// One step t of the backward's state recompute: h (this lane's NPT states) decays by exp(dt A) and takes in
// dt u B (a sequence's first step decays its initial state instead: state_before).
template <bool VARLEN, int NP>
__device__ __forceinline__ void recompute_step(const Params& p, float (&h)[NPT], const float (&A2)[NPT], float dt,
                                               float u, const float* s_B, const int* s_first, int t, int j, int d,
                                               bool valid, long long N) {
    const float dtu = dt * u;
    float Bk[NPT];
    unpack4(reinterpret_cast<const float4*>(s_B + t * NP)[j], Bk);
#pragma unroll
    for (int k = 0; k < NPT; ++k) {
        const float a = ex2(dt * A2[k]);
        if constexpr (VARLEN)
            h[k] = fmaf(a, state_before(p, h[k], s_first[t], d, j * NPT + k, valid && j * NPT + k < N), dtu * Bk[k]);
        else
            h[k] = fmaf(a, h[k], dtu * Bk[k]);
    }
}

// MIN_BLOCKS > 1 caps the registers so that many blocks fit on an SM (at the price of some spilling); which is
// faster is measured (benchmarks/gpu_scan.py --tune).
template <typename T, int TPC, int MIN_BLOCKS, bool VARLEN>
__global__ void __launch_bounds__(NT, MIN_BLOCKS) bwd_kernel(Params p) {
    constexpr int CH = NT / TPC, NP = TPC * NPT, NSUB = SC / SUB, G = 4;
    extern __shared__ float4 smem4[];
    float* s_dt = reinterpret_cast<float*>(smem4);  // dt, then d(dt)
    float* s_u = s_dt + CH * ROW;                    // u, then du
    float* s_dy = s_u + CH * ROW;                    // dy, then y (before the gate)
    float* s_B = s_dy + CH * ROW;
    float* s_C = s_B + SC * NP;
    float* s_dBw = s_C + SC * NP;                    // per-warp channel sums of dB: (NW, SUB, NP)
    float* s_dCw = s_dBw + NW * SUB * NP;
    float* s_dbias = s_dCw + NW * SUB * NP;          // (CH,)
    int* s_first = reinterpret_cast<int*>(s_dbias + CH);  // VARLEN: (SC,) each
    int* s_last = s_first + SC;

    const Coords bc = block_coords<TPC>(p);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int c = bc.c, j = bc.j, d = bc.d;
    const bool valid = bc.valid;
    const int seg = blockIdx.y;
    const long long L = p.seqlen, N = p.dstate, dim = p.dim;
    const long long row0 = bc.b * dim + bc.d0, bd = bc.b * dim + d;
    const long long bc_row = ((long long)bc.b * p.n_groups + bc.g) * N;
    const long long k_begin = seg * p.seg_chunks, k_end = min(p.n_chunks, k_begin + p.seg_chunks);
    const T* delta = static_cast<const T*>(p.delta);
    const T* dout = static_cast<const T*>(p.dout);
    const T* z = static_cast<const T*>(p.z);
    const bool vector_ok = (L % 4) == 0;

    float A2[NPT], An[NPT], g[NPT], a_next[NPT], dA_acc[NPT];
#pragma unroll
    for (int k = 0; k < NPT; ++k) {
        const int n = j * NPT + k;
        const bool on = valid && n < N;
        An[k] = on ? p.A[d * N + n] : 0.f;
        A2[k] = An[k] * LOG2E;
        g[k] = (on && p.end_grad) ? p.end_grad[(bd * p.n_seg + seg) * N + n] : 0.f;
        a_next[k] = 1.f;
        dA_acc[k] = 0.f;
    }
    const float Dd = p.D ? p.D[d] : 0.f;
    float dD_acc = 0.f;
    if (threadIdx.x < CH) s_dbias[threadIdx.x] = 0.f;

    for (long long kc = k_end - 1; kc >= k_begin; --kc) {
        const long long t0 = kc * SC;
        __syncthreads();
        stage_inputs<T, CH, NP>(p, bc, s_dt, s_u, s_B, s_C, t0);
        stage_dy<T, CH>(p, bc, s_dy, t0);
        stage_pack<VARLEN>(p, s_first, s_last, t0);
        __syncthreads();

        float* rdt = s_dt + c * ROW;
        float* ru = s_u + c * ROW;
        float* rdy = s_dy + c * ROW;

        // The states at the start of each SUB-step piece of the chunk.
        float hs[NSUB][NPT];
        {
            float h[NPT];
#pragma unroll
            for (int k = 0; k < NPT; ++k) {
                const int n = j * NPT + k;
                h[k] = (valid && n < N) ? p.chunk_states[(bd * (p.n_chunks + 1) + kc) * N + n] : 0.f;
            }
#pragma unroll
            for (int q = 0; q < NSUB; ++q) {
#pragma unroll
                for (int k = 0; k < NPT; ++k) hs[q][k] = h[k];
                if (q == NSUB - 1) break;
#pragma unroll 4
                for (int t = q * SUB; t < (q + 1) * SUB; ++t)
                    recompute_step<VARLEN, NP>(p, h, A2, rdt[t], ru[t], s_B, s_first, t, j, d, valid, N);
            }
        }

#pragma unroll
        for (int q = NSUB - 1; q >= 0; --q) {
            float hist[SUB][NPT];
            {
                float h[NPT];
#pragma unroll
                for (int k = 0; k < NPT; ++k) h[k] = hs[q][k];
#pragma unroll
                for (int tt = 0; tt < SUB; ++tt) {
                    const int t = q * SUB + tt;
                    recompute_step<VARLEN, NP>(p, h, A2, rdt[t], ru[t], s_B, s_first, t, j, d, valid, N);
#pragma unroll
                    for (int k = 0; k < NPT; ++k) hist[tt][k] = h[k];
                }
            }
#pragma unroll
            for (int gb = SUB - G; gb >= 0; gb -= G) {
                // The group's inputs first (its steps are overwritten below), then its steps in reverse.
                float dt[G], uu[G], dy[G], ddt[G], du[G], y[G];
                int first[G], last[G];
#pragma unroll
                for (int i = 0; i < G; ++i) {
                    const int t = q * SUB + gb + i;
                    dt[i] = rdt[t];
                    uu[i] = ru[t];
                    dy[i] = rdy[t];
                    first[i] = VARLEN ? s_first[t] : -1;
                    last[i] = VARLEN ? s_last[t] : -1;
                }
#pragma unroll
                for (int i = G - 1; i >= 0; --i) {
                    const int tt = gb + i;
                    const float dtu = dt[i] * uu[i];
                    float Bk[NPT], Ck[NPT], dBk[NPT], dCk[NPT];
                    unpack4(reinterpret_cast<const float4*>(s_B + (q * SUB + tt) * NP)[j], Bk);
                    unpack4(reinterpret_cast<const float4*>(s_C + (q * SUB + tt) * NP)[j], Ck);
                    ddt[i] = du[i] = y[i] = 0.f;
#pragma unroll
                    for (int k = 0; k < NPT; ++k) {
                        float gk = fmaf(a_next[k], g[k], Ck[k] * dy[i]);         // dL/dh_t
                        const float a = ex2(dt[i] * A2[k]);
                        const float hk = hist[tt][k];
                        float ah = hk - dtu * Bk[k];                             // a_t h_{t-1}
                        a_next[k] = a;
                        if constexpr (VARLEN) {
                            const int n = j * NPT + k;
                            const bool on = valid && n < N;
                            if (last[i] >= 0 && on && p.dlast) gk += p.dlast[seq_at(p, last[i], d, n)];
                            if (first[i] >= 0) {  // h_{t-1} is the sequence's initial state; nothing flows before it
                                ah = a * state_before(p, 0.f, first[i], d, n, on);
                                if (on && p.dh0) p.dh0[seq_at(p, first[i], d, n)] = a * gk;
                                a_next[k] = 0.f;
                            }
                        }
                        g[k] = gk;
                        dCk[k] = dy[i] * hk;
                        dBk[k] = gk * dtu;
                        dA_acc[k] = fmaf(gk * dt[i], ah, dA_acc[k]);
                        ddt[i] = fmaf(gk, fmaf(An[k], ah, Bk[k] * uu[i]), ddt[i]);
                        du[i] = fmaf(gk, Bk[k], du[i]);
                        y[i] = fmaf(Ck[k], hk, y[i]);
                    }
                    sum_channels_store<TPC>(dBk, s_dBw + (warp * SUB + tt) * NP, lane, j);
                    sum_channels_store<TPC>(dCk, s_dCw + (warp * SUB + tt) * NP, lane, j);
                }
                int key;
                const float sd = sum_lanes4<TPC>(ddt, j, key);
                const float su = sum_lanes4<TPC>(du, j, key);
                const float sy = sum_lanes4<TPC>(y, j, key);
                if ((j & (TPC / 4 - 1)) == 0) {  // in place: every lane of the channel has read the group
                    const int t = q * SUB + gb + key;
                    const float dtk = pick4(dt, key), uk = pick4(uu, key), dyk = pick4(dy, key);
                    rdt[t] = sd;
                    ru[t] = fmaf(su, dtk, Dd * dyk);
                    rdy[t] = fmaf(Dd, uk, sy);
                    dD_acc = fmaf(dyk, uk, dD_acc);
                }
            }
            __syncthreads();
            // dB, dC of these SUB steps: sum the warps, one atomic add per (state, 4 steps).
            for (int i = threadIdx.x; i < NP * (SUB / 4); i += NT) {
                const int n = i / (SUB / 4), t4 = (i % (SUB / 4)) * 4;
                const long long t = t0 + q * SUB + t4;
                if (n >= N || t >= L) continue;
                float4 vb = make_float4(0.f, 0.f, 0.f, 0.f), vc = vb;
#pragma unroll
                for (int w = 0; w < NW; ++w) {
                    const float* pb = s_dBw + (w * SUB + t4) * NP + n;
                    const float* pc = s_dCw + (w * SUB + t4) * NP + n;
                    vb.x += pb[0]; vb.y += pb[NP]; vb.z += pb[2 * NP]; vb.w += pb[3 * NP];
                    vc.x += pc[0]; vc.y += pc[NP]; vc.z += pc[2 * NP]; vc.w += pc[3 * NP];
                }
                const long long off = (bc_row + n) * L + t;
                if (t + 3 < L) {
                    add4(p.dB + off, vb, vector_ok);
                    add4(p.dC + off, vc, vector_ok);
                } else {  // the sequence's last, partial group of 4 steps
                    const float xb[4] = {vb.x, vb.y, vb.z, vb.w}, xc[4] = {vc.x, vc.y, vc.z, vc.w};
                    for (int e = 0; t + e < L; ++e) {
                        atomicAdd(p.dB + off + e, xb[e]);
                        atomicAdd(p.dC + off + e, xc[e]);
                    }
                }
            }
            __syncthreads();
        }

        // du, ddelta (summed per channel into ddelta_bias), dz of the chunk.
        write_tile<T, CH>(static_cast<T*>(p.du), nullptr, nullptr, row0, bc.nvalid, t0, L, p.vec, nullptr,
                          [&](int r, int t, float, float) { return s_u[r * ROW + t]; });
        write_tile<T, CH>(static_cast<T*>(p.ddelta), delta, nullptr, row0, bc.nvalid, t0, L, p.vec,
                          p.dbias ? s_dbias : nullptr, [&](int r, int t, float x, float) {
                              const float dd = s_dt[r * ROW + t];
                              if (!p.softplus) return dd;
                              return dd * softplus_grad(p.bias ? x + p.bias[bc.d0 + r] : x);
                          });
        if (z) write_tile<T, CH>(static_cast<T*>(p.dz), z, dout, row0, bc.nvalid, t0, L, p.vec, nullptr,
                                 [&](int r, int t, float zz, float go) {
                                     const float sg = 1.f / (1.f + __expf(-zz));
                                     return go * s_dy[r * ROW + t] * sg * fmaf(zz, 1.f - sg, 1.f);
                                 });
    }

    dD_acc = sum_lanes<TPC>(dD_acc);
    if (valid) {
#pragma unroll
        for (int k = 0; k < NPT; ++k) {
            const int n = j * NPT + k;
            if (n >= N) continue;
            atomicAdd(p.dA + d * N + n, dA_acc[k]);
            if (seg == 0 && p.dstart) p.dstart[bd * N + n] = a_next[k] * g[k];  // dL/d(initial state)
        }
        if (j == 0 && p.dD) atomicAdd(p.dD + d, dD_acc);
    }
    if (p.dbias) {
        __syncthreads();
        if (threadIdx.x < bc.nvalid) atomicAdd(p.dbias + bc.d0 + threadIdx.x, s_dbias[threadIdx.x]);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// What the launcher (scan_cuda.py) reads from the module
// ---------------------------------------------------------------------------------------------------------------

// Dynamic shared memory of each kernel kind: 0 forward, 1 forward segment pass, 2 backward segment pass,
// 3-4 backward (4: capped at 128 registers).
// VARLEN kernels add the chunk's sequence starts and ends (2 SC ints) at the end.
__host__ __device__ constexpr unsigned long long smem_bytes(int tpc, int kind, bool varlen) {
    const int CH = NT / tpc, NP = tpc * NPT;
    return sizeof(float) * ((kind <= 1   ? 2ull * CH * ROW + 2ull * SC * NP
                             : kind == 2 ? 2ull * CH * ROW + 1ull * SC * NP
                                         : 3ull * CH * ROW + 2ull * SC * NP + 2ull * NW * SUB * NP + CH)
                            + (varlen ? 2 * SC : 0));
}

}  // namespace ssm_scan

extern "C" {
// [varlen][tpc == 16][kind]
#define SSM_SCAN_SMEM_ROW(tpc, varlen)                                                                    \
    {ssm_scan::smem_bytes(tpc, 0, varlen), ssm_scan::smem_bytes(tpc, 1, varlen), ssm_scan::smem_bytes(tpc, 2, varlen), \
     ssm_scan::smem_bytes(tpc, 3, varlen), ssm_scan::smem_bytes(tpc, 4, varlen)}
__constant__ unsigned long long ssm_scan_smem_bytes[2][2][5] = {
    {SSM_SCAN_SMEM_ROW(4, false), SSM_SCAN_SMEM_ROW(16, false)},
    {SSM_SCAN_SMEM_ROW(4, true), SSM_SCAN_SMEM_ROW(16, true)}};
__constant__ long long ssm_scan_params_size = sizeof(Params);
}  // extern "C"
