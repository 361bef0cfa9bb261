// The Clifford layers' fused passes (dist_hyena/nn/fused.py) as one compiled loop each, for CPU tensors.
//
// Every operand is blade-major [8 or 4, rows, C]: element (blade b, row r, channel ch) at b * stride + r * C + ch.
// The loops run over rows and, within a row, over packs of L contiguous channels (one 32-byte vector: 8 floats or
// 4 doubles, GCC/Clang vector extensions): one pack's 8 blades sit in registers, and the product's 64 terms, the
// normalisation and the gate are computed once per pack with no temporaries in memory (the eager version makes
// ~10 passes over [64, rows, C] buffers). A row's last pack may be partial: its missing lanes load as zeros,
// are never stored and are masked out of the layer norm's sums over channels.
//
// DH_RIGHT, DH_SIGN, DH_PATH, DH_NPATH and DH_GRADE are generated from dist_hyena.nn.algebra at build time
// (native.py): the product's index and sign tables (blade_i blade_RIGHT[k][i] = SIGN[k][i] blade_k), each term's
// grade path (one learned weight per path and channel) and each blade's grade. As compile-time constants they let
// the fully unrolled loops over terms index registers, not memory.
//
// Row ranges: a caller may split rows across threads; each function takes the blade stride separately from the
// number of rows it processes, and accumulates its parameter gradients into the buffers it is given.

#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#ifndef DH_RIGHT
#error "DH_RIGHT (the product's index table) must be defined; dist_hyena/nn/native.py builds this file"
#endif

namespace {

constexpr int RIGHT[8][8] = DH_RIGHT;
constexpr int SIGN[8][8] = DH_SIGN;  // of each term: blade_i blade_RIGHT[k][i] = SIGN[k][i] blade_k
constexpr int PATH[8][8] = DH_PATH;  // its grade path (g_i, g_j, g_k): which of the NPATH weights it takes
constexpr int NPATH = DH_NPATH;
constexpr int GRADE[8] = DH_GRADE;

// LEFT[k][j]: the i with RIGHT[k][i] = j (each product of blades is one blade, so it exists and is unique).
struct Table {
    int at[8][8];
};
constexpr Table invert(const int (&right)[8][8]) {
    Table t{};
    for (int k = 0; k < 8; ++k)
        for (int i = 0; i < 8; ++i) t.at[k][right[k][i]] = i;
    return t;
}
constexpr Table LEFT = invert(RIGHT);

// REACHES[k][p]: 1 where output blade k has a term on grade path p (44 of the 8 x 20 pairs). COMPACT_REACHES: the
// same for compact operands, whose blades 4-7 (grades 2 and 3) are zero: the terms blade_i blade_j with i, j < 4
// (16 of the 64), on 5 paths.
struct PathTable {
    int at[8][NPATH];
};
constexpr PathTable reaches(const int (&path)[8][8], const int (&right)[8][8], int blades) {
    PathTable t{};
    for (int k = 0; k < 8; ++k)
        for (int i = 0; i < blades; ++i)
            if (right[k][i] < blades) t.at[k][path[k][i]] = 1;
    return t;
}
constexpr PathTable REACHES = reaches(PATH, RIGHT, 8);
constexpr PathTable COMPACT_REACHES = reaches(PATH, RIGHT, 4);

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
// One build runs on any x86-64 and uses AVX2 + FMA where the CPU has them (chosen once, at load).
#define DH_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define DH_CLONES
#endif
#define DH_INLINE inline __attribute__((always_inline))
#define DH_LAMBDA __attribute__((always_inline))
#define DH_UNROLL _Pragma("GCC unroll 32")

template <typename T>
struct Lanes {
    typedef T V __attribute__((vector_size(32)));
    static constexpr int N = 32 / sizeof(T);
};

// Full packs pass their width as a compile-time constant (their loads and stores are single vector moves), a row's
// last partial pack as an int.
template <typename T>
using Full = std::integral_constant<int, Lanes<T>::N>;

// Calls pack(ch, n) for each pack of n channels starting at ch.
template <typename T, typename F>
DH_INLINE void over_packs(int64_t C, F&& pack) {
    int64_t ch = 0;
    for (; ch + Lanes<T>::N <= C; ch += Lanes<T>::N) pack(ch, Full<T>{});
    if (ch < C) pack(ch, int(C - ch));
}

// n <= L lanes from p; the others zero.
template <typename T, typename N>
DH_INLINE typename Lanes<T>::V load(const T* p, N n) {
    typename Lanes<T>::V v = {};
    std::memcpy(&v, p, n * sizeof(T));
    return v;
}

template <typename T, typename N>
DH_INLINE void store(T* p, typename Lanes<T>::V v, N n) {
    std::memcpy(p, &v, n * sizeof(T));
}

template <typename T, typename N>
DH_INLINE void load8(const T* p, int64_t stride, N n, typename Lanes<T>::V* v) {
    DH_UNROLL for (int b = 0; b < 8; ++b) v[b] = load(p + b * stride, n);
}

template <typename T>
DH_INLINE typename Lanes<T>::V vsqrt(typename Lanes<T>::V v) {
    DH_UNROLL for (int l = 0; l < Lanes<T>::N; ++l) v[l] = std::sqrt(v[l]);
    return v;
}

// exp per lane: std::exp for doubles (the tests' precision); for floats Cephes' expf on the whole pack (the same
// range reduction and polynomial, ~1 ulp; scalar expf calls were most of the gate's time).
template <typename T>
DH_INLINE typename Lanes<T>::V vexp(typename Lanes<T>::V v) {
    DH_UNROLL for (int l = 0; l < Lanes<T>::N; ++l) v[l] = std::exp(v[l]);
    return v;
}

template <>
DH_INLINE Lanes<float>::V vexp<float>(Lanes<float>::V v) {
    typedef Lanes<float>::V V;
    typedef int32_t I __attribute__((vector_size(32)));
    v = v > 88.3762626647949f ? 88.3762626647949f : v;
    v = v < -87.3365447504019f ? -87.3365447504019f : v;
    const V t = v * 1.44269504088896341f + 0.5f;  // n = floor(x / ln 2 + 1/2)
    const I ti = __builtin_convertvector(t, I);
    const V n = __builtin_convertvector(ti, V) + __builtin_convertvector(__builtin_convertvector(ti, V) > t, V);
    const V r = v - n * 0.693359375f + n * 2.12194440e-4f;  // x - n ln 2 in two parts
    V p = V{} + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const I scale = (__builtin_convertvector(n, I) + 127) << 23;  // 2^n
    V s;
    std::memcpy(&s, &scale, sizeof s);
    return p * s;
}

template <typename T>
DH_INLINE typename Lanes<T>::V vsigmoid(typename Lanes<T>::V v) {
    return T(1) / (T(1) + vexp<T>(-v));
}

// 1 on the first n lanes, 0 on the others.
template <typename T>
DH_INLINE typename Lanes<T>::V lane_mask(int n) {
    typename Lanes<T>::V m;
    DH_UNROLL for (int l = 0; l < Lanes<T>::N; ++l) m[l] = l < n ? T(1) : T(0);
    return m;
}

template <typename T>
DH_INLINE T lane_sum(typename Lanes<T>::V v) {
    T s = 0;
    DH_UNROLL for (int l = 0; l < Lanes<T>::N; ++l) s += v[l];
    return s;
}

// The product's right operand normalised per grade, b = x / (s (|x_g| - 1) + 1), |x_g| = sqrt(sum x^2 + eps^2), on
// the first NB blades (8, or 4 for compact operands: grades 0 and 1).
template <typename T, int NB = 8, typename N, typename V = typename Lanes<T>::V>
DH_INLINE void normalise(const V* xv, const T* s, int64_t C, N n, T eps2, V* norm, V* inv, V* bv) {
    constexpr int NG = GRADE[NB - 1] + 1;
    V n2[4] = {};
    DH_UNROLL for (int b = 0; b < NB; ++b) n2[GRADE[b]] += xv[b] * xv[b];
    DH_UNROLL for (int g = 0; g < NG; ++g) {
        const V sg = load(s + g * C, n);
        norm[g] = vsqrt<T>(n2[g] + eps2);
        inv[g] = T(1) / ((T(1) - sg) + sg * norm[g]);
    }
    DH_UNROLL for (int b = 0; b < NB; ++b) bv[b] = xv[b] * inv[GRADE[b]];
}

// Output blade k's unweighted sum over grade path p, S_kp = sum_{i: PATH[k][i] = p} SIGN[k][i] a_i b_RIGHT[k][i]
// (k and p are compile-time constants once the callers' loops are unrolled: straight-line code, no arrays); with
// NB = 4 only the terms of compact operands (i, RIGHT[k][i] < 4).
template <int NB = 8, typename V>
DH_INLINE V path_sum(int k, int p, const V* av, const V* bv) {
    V acc = {};
    bool first = true;
    DH_UNROLL for (int i = 0; i < NB; ++i) {
        if (PATH[k][i] != p || RIGHT[k][i] >= NB) continue;
        const V t = av[i] * bv[RIGHT[k][i]];
        acc = first ? (SIGN[k][i] > 0 ? t : -t) : (SIGN[k][i] > 0 ? acc + t : acc - t);
        first = false;
    }
    return acc;
}

// out = skip + GP_w(a, normalise_s(x)): y_k = sum_p w_p S_kp, the 64 terms summed per grade path first (64 products
// and 44 weighted sums instead of 64 weighted terms).
template <typename T, typename V = typename Lanes<T>::V>
DH_INLINE void product_forward(const T* a, const T* x, const T* w, const T* s, const T* skip, T* out, int64_t stride,
                               int64_t rows, int64_t C, T eps2) {
    for (int64_t r = 0; r < rows; ++r) {
        over_packs<T>(C, [&](int64_t ch, auto n) DH_LAMBDA {
            const int64_t at = r * C + ch;
            V av[8], xv[8], bv[8], norm[4], inv[4];
            load8(a + at, stride, n, av);
            load8(x + at, stride, n, xv);
            normalise<T>(xv, s + ch, C, n, eps2, norm, inv, bv);
            DH_UNROLL for (int k = 0; k < 8; ++k) {
                V y = load(skip + k * stride + at, n);
                DH_UNROLL for (int p = 0; p < NPATH; ++p) {
                    if (REACHES.at[k][p]) y += load(w + p * C + ch, n) * path_sum(k, p, av, bv);
                }
                store(out + k * stride + at, y, n);
            }
        });
    }
}

// The product's backward: grad_a, grad_x (written), grad_w [NPATH, C] and grad_s [4, C] (accumulated when
// NEED_PARAMS), recomputing b from x.
template <typename T, bool NEED_PARAMS, typename V = typename Lanes<T>::V>
DH_INLINE void product_backward(const T* grad, const T* a, const T* x, const T* w, const T* s, T* grad_a, T* grad_x,
                                T* grad_w, T* grad_s, int64_t stride, int64_t rows, int64_t C, T eps2) {
    for (int64_t r = 0; r < rows; ++r) {
        over_packs<T>(C, [&](int64_t ch, auto n) DH_LAMBDA {
            const int64_t at = r * C + ch;
            V av[8], xv[8], bv[8], gv[8], norm[4], inv[4], gb[8];
            load8(a + at, stride, n, av);
            load8(x + at, stride, n, xv);
            load8(grad + at, stride, n, gv);
            normalise<T>(xv, s + ch, C, n, eps2, norm, inv, bv);
            // One sum at a time (fewer live registers than accumulating all 16 together), with c[k, i] = SIGN[k][i]
            // w_PATH[k][i]: grad_a_i = sum_k c[k, i] g_k b_RIGHT[k][i], grad_b_j = sum_k c[k, LEFT[k][j]] g_k
            // a_LEFT[k][j].
            DH_UNROLL for (int i = 0; i < 8; ++i) {
                V acc = {};
                DH_UNROLL for (int k = 0; k < 8; ++k) {
                    const V t = load(w + PATH[k][i] * C + ch, n) * gv[k] * bv[RIGHT[k][i]];
                    acc += SIGN[k][i] > 0 ? t : -t;
                }
                store(grad_a + i * stride + at, acc, n);
            }
            DH_UNROLL for (int j = 0; j < 8; ++j) {
                V acc = {};
                DH_UNROLL for (int k = 0; k < 8; ++k) {
                    const int i = LEFT.at[k][j];
                    const V t = load(w + PATH[k][i] * C + ch, n) * gv[k] * av[i];
                    acc += SIGN[k][i] > 0 ? t : -t;
                }
                gb[j] = acc;
            }
            if (NEED_PARAMS) {  // grad_w_p = sum_k g_k S_kp: 20 sums into memory per pack instead of 64
                DH_UNROLL for (int p = 0; p < NPATH; ++p) {
                    V gw = load(grad_w + p * C + ch, n);
                    DH_UNROLL for (int k = 0; k < 8; ++k) {
                        if (REACHES.at[k][p]) gw += gv[k] * path_sum(k, p, av, bv);
                    }
                    store(grad_w + p * C + ch, gw, n);
                }
            }
            // b_j = x_j inv_g: grad_x_j = gb_j inv_g - x_j inv_g^2 s_g / |x_g| sum_{j' in g} gb_j' x_j'
            V u[4] = {};
            DH_UNROLL for (int b = 0; b < 8; ++b) u[GRADE[b]] += gb[b] * xv[b];
            DH_UNROLL for (int g = 0; g < 4; ++g) {
                u[g] *= inv[g] * inv[g];
                if (NEED_PARAMS) store(grad_s + g * C + ch, load(grad_s + g * C + ch, n) - u[g] * (norm[g] - T(1)), n);
                u[g] *= load(s + g * C + ch, n) / norm[g];
            }
            DH_UNROLL for (int b = 0; b < 8; ++b) store(grad_x + b * stride + at, gb[b] * inv[GRADE[b]] - xv[b] * u[GRADE[b]], n);
        });
    }
}

// The gate's per-grade quantities of one pack: squared grade norms n2, invariants inv (the scalar itself for
// grade 0), gates sigmoid(scale inv + shift) (1 without a gate).
// NG < 4: only the first NG grades (the others are zero).
template <typename T, bool GATED, bool SQUARED, int NG = 4, typename N, typename V = typename Lanes<T>::V>
DH_INLINE void gate_of(const V* hv, const T* scale, const T* shift, int64_t C, N n, T eps2, V* n2, V* inv,
                       V* gate) {
    DH_UNROLL for (int g = 0; g < NG; ++g) n2[g] = V{};
    DH_UNROLL for (int b = 0; b < 8; ++b) {
        if (GRADE[b] < NG) n2[GRADE[b]] += hv[b] * hv[b];
    }
    DH_UNROLL for (int g = 0; g < NG; ++g) {
        if (GATED) {
            inv[g] = g == 0 ? hv[0] : (SQUARED ? n2[g] : vsqrt<T>(n2[g] + eps2));
            gate[g] = vsigmoid<T>(load(scale + g * C, n) * inv[g] + load(shift + g * C, n));
        } else {
            inv[g] = V{};
            gate[g] = V{} + T(1);
        }
    }
}

// Gate z_b = h_b gate_g, then (LN) the layer norm y = z ln_scale / (mean_C sqrt(|z|^2 + eps^2) + eps).
// ``work``: 4 C scratch values (the row's gates).
template <typename T, bool GATED, bool LN, bool SQUARED, typename V = typename Lanes<T>::V>
DH_INLINE void gate_norm_forward(const T* h, const T* scale, const T* shift, const T* ln_scale, T* out, T* work,
                                 int64_t stride, int64_t rows, int64_t C, T eps) {
    const T eps2 = eps * eps;
    for (int64_t r = 0; r < rows; ++r) {
        T rr = 1;
        if (LN) {
            V msum = {};
            over_packs<T>(C, [&](int64_t ch, auto n) DH_LAMBDA {
                V hv[8], n2[4], inv[4], gate[4], z2 = V{} + eps2;
                load8(h + r * C + ch, stride, n, hv);
                gate_of<T, GATED, SQUARED>(hv, scale + ch, shift + ch, C, n, eps2, n2, inv, gate);
                DH_UNROLL for (int g = 0; g < 4; ++g) {
                    z2 += gate[g] * gate[g] * n2[g];
                    store(work + g * C + ch, gate[g], n);
                }
                msum += vsqrt<T>(z2) * lane_mask<T>(n);
            });
            rr = T(1) / (lane_sum<T>(msum) / T(C) + eps);
        }
        over_packs<T>(C, [&](int64_t ch, auto n) DH_LAMBDA {
            const int64_t at = r * C + ch;
            V hv[8], n2[4], inv[4], gate[4];
            load8(h + at, stride, n, hv);
            if (LN) {
                const V f = load(ln_scale + ch, n) * rr;
                DH_UNROLL for (int g = 0; g < 4; ++g) gate[g] = load(work + g * C + ch, n) * f;
            } else {
                gate_of<T, GATED, SQUARED>(hv, scale + ch, shift + ch, C, n, eps2, n2, inv, gate);
            }
            DH_UNROLL for (int b = 0; b < 8; ++b) store(out + b * stride + at, hv[b] * gate[GRADE[b]], n);
        });
    }
}

// Backward of gate_norm_forward: grad_h written; grad_scale, grad_shift [4, C] and grad_ln [C] accumulated.
// ``work``: 18 C scratch values.
template <typename T, bool GATED, bool LN, bool SQUARED, typename V = typename Lanes<T>::V>
DH_INLINE void gate_norm_backward(const T* grad, const T* h, const T* scale, const T* shift, const T* ln_scale,
                                  T* grad_h, T* grad_scale, T* grad_shift, T* grad_ln, T* work, int64_t stride,
                                  int64_t rows, int64_t C, T eps) {
    const T eps2 = eps * eps;
    // scratch per channel: n2 [4], inv [4], gate [4], e [4] (sum over a grade's blades of gy_b h_b), m, d
    T *w_n2 = work, *w_inv = work + 4 * C, *w_gate = work + 8 * C, *w_e = work + 12 * C, *w_m = work + 16 * C,
      *w_d = work + 17 * C;
    for (int64_t r = 0; r < rows; ++r) {
        V msum = {}, dsum = {};
        over_packs<T>(C, [&](int64_t ch, auto n) DH_LAMBDA {
            const int64_t at = r * C + ch;
            V hv[8], gv[8], n2[4], inv[4], gate[4], e[4] = {}, z2 = V{} + eps2, d = {};
            load8(h + at, stride, n, hv);
            load8(grad + at, stride, n, gv);
            gate_of<T, GATED, SQUARED>(hv, scale + ch, shift + ch, C, n, eps2, n2, inv, gate);
            DH_UNROLL for (int b = 0; b < 8; ++b) e[GRADE[b]] += gv[b] * hv[b];
            DH_UNROLL for (int g = 0; g < 4; ++g) {
                z2 += gate[g] * gate[g] * n2[g];
                d += gate[g] * e[g];  // sum_b gy_b z_b
                if (GATED) {  // what the second pass reads: the gate's scratch only with a gate, m and d only with LN
                    store(w_n2 + g * C + ch, n2[g], n);
                    store(w_inv + g * C + ch, inv[g], n);
                    store(w_gate + g * C + ch, gate[g], n);
                    store(w_e + g * C + ch, e[g], n);
                }
            }
            if (LN) {
                const V m = vsqrt<T>(z2);
                store(w_m + ch, m, n);
                store(w_d + ch, d, n);
                msum += m * lane_mask<T>(n);
                dsum += d * load(ln_scale + ch, n);  // zero on missing lanes
            }
        });
        // dL/dz_b = gy_b f + z_b coef / m, f = ln_scale rr, coef = -rr^2 / C sum_C ln_scale sum_b gy_b z_b
        const T rr = LN ? T(1) / (lane_sum<T>(msum) / T(C) + eps) : T(1);
        const T coef = LN ? -rr * rr * lane_sum<T>(dsum) / T(C) : T(0);
        over_packs<T>(C, [&](int64_t ch, auto n) DH_LAMBDA {
            const int64_t at = r * C + ch;
            V hv[8], gv[8], f1[4], f2[4], dinv0 = {};
            load8(h + at, stride, n, hv);
            load8(grad + at, stride, n, gv);
            const V f = LN ? load(ln_scale + ch, n) * rr : V{} + T(1);
            const V coef_m = LN ? coef / load(w_m + ch, n) : V{};
            if (LN) store(grad_ln + ch, load(grad_ln + ch, n) + load(w_d + ch, n) * rr, n);
            DH_UNROLL for (int g = 0; g < 4; ++g) {
                if (!GATED) {
                    f1[g] = f;
                    f2[g] = coef_m;
                    continue;
                }
                const V gate = load(w_gate + g * C + ch, n), inv = load(w_inv + g * C + ch, n);
                // d_g = sum_{b in g} dL/dz_b h_b, then through the sigmoid and the invariant
                const V dz = f * load(w_e + g * C + ch, n) + gate * coef_m * load(w_n2 + g * C + ch, n);
                const V dpre = dz * gate * (T(1) - gate);
                store(grad_shift + g * C + ch, load(grad_shift + g * C + ch, n) + dpre, n);
                store(grad_scale + g * C + ch, load(grad_scale + g * C + ch, n) + dpre * inv, n);
                const V dinv = dpre * load(scale + g * C + ch, n);
                f1[g] = gate * f;
                f2[g] = gate * gate * coef_m;
                if (g == 0)
                    dinv0 = dinv;
                else
                    f2[g] += SQUARED ? T(2) * dinv : dinv / inv;
            }
            DH_UNROLL for (int b = 0; b < 8; ++b) {
                const V gh = gv[b] * f1[GRADE[b]] + hv[b] * f2[GRADE[b]];
                store(grad_h + b * stride + at, b == 0 ? gh + dinv0 : gh, n);
            }
        });
    }
}

// ---- A one-layer Clifford MLP's hidden layer on compact operands (fused.CompactMLP) ----
//
// The MLP's input maps read only vectors and scalars, so the left operand a, the right operand x and the skip are
// compact: blades 0-3, the others zero. Then h = skip + GP_w(a, normalise_s(x)) takes 16 of the product's 64 terms
// and has blades 0-6 (every term of blade 7 reads a zero), and the gate and the layer norm follow in the same pass.
// Only blades 0-3 of the result are written: what the MLP's last map reads. Operands: a, x and skip are channel
// blocks of one packed [4, rows, ld] tensor (blade stride in_stride, ld = 3 C); out is [4, rows, C] (out_stride).

// h's blades 0-6 (hv[7] = 0) from a pack of compact operands; also b = normalise_s(x) and its norms (grades 0, 1).
template <typename T, typename N, typename V = typename Lanes<T>::V>
DH_INLINE void compact_hidden(const T* a, const T* x, const T* skip, int64_t stride, const T* w, const T* s,
                              int64_t C, N n, T eps2, V* av, V* xv, V* bv, V* norm, V* inv, V* hv) {
    DH_UNROLL for (int b = 0; b < 4; ++b) {
        av[b] = load(a + b * stride, n);
        xv[b] = load(x + b * stride, n);
    }
    normalise<T, 4>(xv, s, C, n, eps2, norm, inv, bv);
    DH_UNROLL for (int k = 0; k < 8; ++k) {
        V y = k < 4 ? load(skip + k * stride, n) : V{};
        DH_UNROLL for (int p = 0; p < NPATH; ++p) {
            if (COMPACT_REACHES.at[k][p]) y += load(w + p * C, n) * path_sum<4>(k, p, av, bv);
        }
        hv[k] = y;
    }
}

// ``work``: 6 C scratch values (the row's blades 0-3 of h and the gates of grades 0 and 1).
template <typename T, typename V = typename Lanes<T>::V>
DH_INLINE void compact_layer_forward(const T* a, const T* x, const T* skip, const T* w, const T* s, const T* scale,
                                     const T* shift, const T* ln_scale, T* out, T* work, int64_t in_stride, int64_t ld,
                                     int64_t out_stride, int64_t rows, int64_t C, T eps, bool ln,
                                     bool squared) {
    const T eps2 = eps * eps;
    for (int64_t r = 0; r < rows; ++r) {
        V msum = {};
        over_packs<T>(C, [&](int64_t ch, auto n) DH_LAMBDA {
            const int64_t at = r * ld + ch;
            V av[4], xv[4], bv[4], norm[4], inv[4], hv[8], n2[4], ginv[4], gate[4];
            compact_hidden<T>(a + at, x + at, skip + at, in_stride, w + ch, s + ch, C, n, eps2, av, xv, bv, norm,
                              inv, hv);
            if (squared)
                gate_of<T, true, true, 3>(hv, scale + ch, shift + ch, C, n, eps2, n2, ginv, gate);
            else
                gate_of<T, true, false, 3>(hv, scale + ch, shift + ch, C, n, eps2, n2, ginv, gate);
            if (!ln) {
                DH_UNROLL for (int b = 0; b < 4; ++b) {
                    store(out + b * out_stride + r * C + ch, hv[b] * gate[GRADE[b]], n);
                }
                return;
            }
            V z2 = V{} + eps2;
            DH_UNROLL for (int g = 0; g < 3; ++g) z2 += gate[g] * gate[g] * n2[g];
            msum += vsqrt<T>(z2) * lane_mask<T>(n);
            DH_UNROLL for (int b = 0; b < 4; ++b) store(work + b * C + ch, hv[b], n);
            store(work + 4 * C + ch, gate[0], n);
            store(work + 5 * C + ch, gate[1], n);
        });
        if (!ln) continue;
        const T rr = T(1) / (lane_sum<T>(msum) / T(C) + eps);
        over_packs<T>(C, [&](int64_t ch, auto n) DH_LAMBDA {
            const V f = load(ln_scale + ch, n) * rr;
            DH_UNROLL for (int b = 0; b < 4; ++b) {
                const V g = load(work + (4 + GRADE[b]) * C + ch, n);
                store(out + b * out_stride + r * C + ch, load(work + b * C + ch, n) * g * f, n);
            }
        });
    }
}

// Backward of compact_layer_forward, from the gradient of its blades 0-3 (grad, [4, rows, C]): grad_a, grad_x and
// grad_skip written (channel blocks of one packed [4, rows, ld] tensor), and the forward's output again (out, the
// last map's weight gradient reads it); grad_w [NPATH, C], grad_s, grad_scale, grad_shift [4, C] and grad_ln [C]
// accumulated. ``work``: 20 C scratch values.
template <typename T, typename V = typename Lanes<T>::V>
DH_INLINE void compact_layer_backward(const T* grad, const T* a, const T* x, const T* skip, const T* w, const T* s,
                                      const T* scale, const T* shift, const T* ln_scale, T* grad_a, T* grad_x,
                                      T* grad_skip, T* out, T* grad_w, T* grad_s, T* grad_scale, T* grad_shift,
                                      T* grad_ln, T* work, int64_t in_stride, int64_t ld, int64_t out_stride,
                                      int64_t rows, int64_t C, T eps, bool ln, bool squared) {
    const T eps2 = eps * eps;
    // scratch per channel: h [7], and for grades 0-2 n2 [3], inv [3], gate [3]; e [2] (sum over a grade's blades of
    // gy_b h_b: grades 0 and 1, the blades with a gradient), m, d
    T *w_h = work, *w_n2 = work + 7 * C, *w_inv = work + 10 * C, *w_gate = work + 13 * C, *w_e = work + 16 * C,
      *w_m = work + 18 * C, *w_d = work + 19 * C;
    for (int64_t r = 0; r < rows; ++r) {
        V msum = {}, dsum = {};
        over_packs<T>(C, [&](int64_t ch, auto n) DH_LAMBDA {
            const int64_t at = r * ld + ch;
            V av[4], xv[4], bv[4], norm[4], inv[4], hv[8], gv[4], n2[4], ginv[4], gate[4], z2 = V{} + eps2, d = {};
            compact_hidden<T>(a + at, x + at, skip + at, in_stride, w + ch, s + ch, C, n, eps2, av, xv, bv, norm,
                              inv, hv);
            if (squared)
                gate_of<T, true, true, 3>(hv, scale + ch, shift + ch, C, n, eps2, n2, ginv, gate);
            else
                gate_of<T, true, false, 3>(hv, scale + ch, shift + ch, C, n, eps2, n2, ginv, gate);
            DH_UNROLL for (int b = 0; b < 4; ++b) gv[b] = load(grad + b * out_stride + r * C + ch, n);
            const V e[2] = {gv[0] * hv[0], gv[1] * hv[1] + gv[2] * hv[2] + gv[3] * hv[3]};
            DH_UNROLL for (int b = 0; b < 7; ++b) store(w_h + b * C + ch, hv[b], n);
            DH_UNROLL for (int g = 0; g < 3; ++g) {
                z2 += gate[g] * gate[g] * n2[g];
                if (g < 2) {
                    d += gate[g] * e[g];  // sum_b gy_b z_b
                    store(w_e + g * C + ch, e[g], n);
                }
                store(w_n2 + g * C + ch, n2[g], n);
                store(w_inv + g * C + ch, ginv[g], n);
                store(w_gate + g * C + ch, gate[g], n);
            }
            if (ln) {
                const V m = vsqrt<T>(z2);
                store(w_m + ch, m, n);
                store(w_d + ch, d, n);
                msum += m * lane_mask<T>(n);
                dsum += d * load(ln_scale + ch, n);  // zero on missing lanes
            }
        });
        // as in gate_norm_backward: dL/dz_b = gy_b f + z_b coef / m, f = ln_scale rr
        const T rr = ln ? T(1) / (lane_sum<T>(msum) / T(C) + eps) : T(1);
        const T coef = ln ? -rr * rr * lane_sum<T>(dsum) / T(C) : T(0);
        over_packs<T>(C, [&](int64_t ch, auto n) DH_LAMBDA {
            const int64_t at = r * ld + ch;
            V gv[4], hv[7], gh[8], f1[3], f2[3], dinv0 = {};
            DH_UNROLL for (int b = 0; b < 4; ++b) gv[b] = load(grad + b * out_stride + r * C + ch, n);
            DH_UNROLL for (int b = 0; b < 7; ++b) hv[b] = load(w_h + b * C + ch, n);
            const V f = ln ? load(ln_scale + ch, n) * rr : V{} + T(1);
            const V coef_m = ln ? coef / load(w_m + ch, n) : V{};
            if (ln) store(grad_ln + ch, load(grad_ln + ch, n) + load(w_d + ch, n) * rr, n);
            DH_UNROLL for (int g = 0; g < 3; ++g) {
                const V gate = load(w_gate + g * C + ch, n), ginv = load(w_inv + g * C + ch, n);
                V dz = gate * coef_m * load(w_n2 + g * C + ch, n);
                if (g < 2) dz += f * load(w_e + g * C + ch, n);
                const V dpre = dz * gate * (T(1) - gate);
                store(grad_shift + g * C + ch, load(grad_shift + g * C + ch, n) + dpre, n);
                store(grad_scale + g * C + ch, load(grad_scale + g * C + ch, n) + dpre * ginv, n);
                const V dinv = dpre * load(scale + g * C + ch, n);
                f1[g] = gate * f;
                f2[g] = gate * gate * coef_m;
                if (g == 0)
                    dinv0 = dinv;
                else
                    f2[g] += squared ? T(2) * dinv : dinv / ginv;
            }
            // the gradient of h (blade 7 has no terms), then the product's backward over the compact terms
            DH_UNROLL for (int b = 0; b < 7; ++b) {
                gh[b] = hv[b] * f2[GRADE[b]];
                if (b < 4) gh[b] += gv[b] * f1[GRADE[b]];
            }
            gh[0] += dinv0;
            gh[7] = V{};
            DH_UNROLL for (int b = 0; b < 4; ++b) store(out + b * out_stride + r * C + ch, hv[b] * f1[GRADE[b]], n);
            DH_UNROLL for (int b = 0; b < 4; ++b) store(grad_skip + b * in_stride + at, gh[b], n);
            V av[4], xv[4], bv[4], norm[4], inv[4];
            DH_UNROLL for (int b = 0; b < 4; ++b) {
                av[b] = load(a + b * in_stride + at, n);
                xv[b] = load(x + b * in_stride + at, n);
            }
            normalise<T, 4>(xv, s + ch, C, n, eps2, norm, inv, bv);
            DH_UNROLL for (int i = 0; i < 4; ++i) {
                V acc = {};
                DH_UNROLL for (int k = 0; k < 7; ++k) {
                    if (RIGHT[k][i] >= 4) continue;
                    const V t = load(w + PATH[k][i] * C + ch, n) * gh[k] * bv[RIGHT[k][i]];
                    acc += SIGN[k][i] > 0 ? t : -t;
                }
                store(grad_a + i * in_stride + at, acc, n);
            }
            V gb[4];
            DH_UNROLL for (int j = 0; j < 4; ++j) {
                V acc = {};
                DH_UNROLL for (int k = 0; k < 7; ++k) {
                    const int i = LEFT.at[k][j];
                    if (i >= 4) continue;
                    const V t = load(w + PATH[k][i] * C + ch, n) * gh[k] * av[i];
                    acc += SIGN[k][i] > 0 ? t : -t;
                }
                gb[j] = acc;
            }
            DH_UNROLL for (int p = 0; p < NPATH; ++p) {
                bool any = false;
                DH_UNROLL for (int k = 0; k < 7; ++k) any = any || COMPACT_REACHES.at[k][p];
                if (!any) continue;
                V gw = load(grad_w + p * C + ch, n);
                DH_UNROLL for (int k = 0; k < 7; ++k) {
                    if (COMPACT_REACHES.at[k][p]) gw += gh[k] * path_sum<4>(k, p, av, bv);
                }
                store(grad_w + p * C + ch, gw, n);
            }
            // b_j = x_j inv_g (grades 0, 1), as in product_backward
            V u[2] = {gb[0] * xv[0], gb[1] * xv[1] + gb[2] * xv[2] + gb[3] * xv[3]};
            DH_UNROLL for (int g = 0; g < 2; ++g) {
                u[g] *= inv[g] * inv[g];
                store(grad_s + g * C + ch, load(grad_s + g * C + ch, n) - u[g] * (norm[g] - T(1)), n);
                u[g] *= load(s + g * C + ch, n) / norm[g];
            }
            DH_UNROLL for (int b = 0; b < 4; ++b) {
                store(grad_x + b * in_stride + at, gb[b] * inv[GRADE[b]] - xv[b] * u[GRADE[b]], n);
            }
        });
    }
}

// ---- A one-layer Clifford MLP on a compact input, read out: the whole map (fused.CompactMLP) ----
//
// vec [rows, Cv, 3] and sca [rows, S] -> out_v [rows, nv, 3] (vector blades of the last map's first nv channels)
// and out_s [rows, ns] (scalar blade of the next ns), with the parameters in their modules' own layouts: the input
// maps' weights [4, In, H] (In = Cv + S; grade 0 reads the scalar channels Cv.., grade 1 the vector channels) and
// biases [H], the path weights [NPATH, H], the norm gate, gate scale and shift [4, H], the layer-norm scale [H] (or
// null), the last map's weight [4, H, O] and bias [O]. Each row is one pass: the three input maps into a row of
// packed operands [4, 3 H] (a | x | skip), the compact layer, the read. The matrices are small (In, nv, ns of a few
// to a few tens): loops over packs of output channels, a broadcast input value times a contiguous weight row.

template <typename T>
struct MLPShape {
    int64_t Cv, S, H, O, nv, ns;
    int64_t in() const { return Cv + S; }
};

// What a call derives from the parameters once: the input maps' grade-0 and grade-1 weights as [S, 3 H] and
// [Cv, 3 H] with their blocks side by side (the skip's scaled by 1/sqrt(2), as GeometricProduct does), the biases
// [3 H] (the left map has none), the path weights times 1/sqrt(2), s = sigmoid(norm gate), and the last map's read
// columns transposed ([ns, H], [nv, H]) for the backward's products.
template <typename T>
struct MLPParams {
    std::vector<T> w0, w1, bias, pw, sg, last0t, last1t;

    MLPParams(const MLPShape<T>& d, const T* const* maps, const T* right_b, const T* skip_b, const T* path_w,
              const T* norm_gate, const T* last_w) {
        const int64_t H = d.H, ld = 3 * H, in = d.in();
        const T half = T(1) / std::sqrt(T(2));
        w0.resize(d.S * ld);
        w1.resize(d.Cv * ld);
        bias.assign(ld, T(0));
        for (int part = 0; part < 3; ++part) {
            const T f = part == 2 ? half : T(1);
            for (int64_t i = 0; i < d.S; ++i)
                for (int64_t h = 0; h < H; ++h) w0[i * ld + part * H + h] = f * maps[part][(d.Cv + i) * H + h];
            for (int64_t c = 0; c < d.Cv; ++c)
                for (int64_t h = 0; h < H; ++h) w1[c * ld + part * H + h] = f * maps[part][in * H + c * H + h];
        }
        for (int64_t h = 0; h < H; ++h) {
            bias[H + h] = right_b[h];
            bias[2 * H + h] = half * skip_b[h];
        }
        pw.resize(NPATH * H);
        for (int64_t i = 0; i < NPATH * H; ++i) pw[i] = half * path_w[i];
        sg.resize(4 * H);
        for (int64_t i = 0; i < 4 * H; ++i) sg[i] = T(1) / (T(1) + std::exp(-norm_gate[i]));
        last0t.resize(d.ns * H);
        last1t.resize(d.nv * H);
        for (int64_t h = 0; h < H; ++h) {
            for (int64_t j = 0; j < d.ns; ++j) last0t[j * H + h] = last_w[h * d.O + d.nv + j];
            for (int64_t c = 0; c < d.nv; ++c) last1t[c * H + h] = last_w[H * d.O + h * d.O + c];
        }
    }
};

// sum_j x[j * xs] w[j * ws] for one pack of output channels (w points at it), j < count: a row of a small matrix
// product, as four independent chains of multiply-adds (one chain waits for each add in turn).
template <typename T, typename N, typename V = typename Lanes<T>::V>
DH_INLINE V weighted_sum(const T* x, int64_t xs, const T* w, int64_t ws, int64_t count, N n, V acc = V{}) {
    V a1 = {}, a2 = {}, a3 = {};
    int64_t j = 0;
    for (; j + 4 <= count; j += 4) {
        acc += x[j * xs] * load(w + j * ws, n);
        a1 += x[(j + 1) * xs] * load(w + (j + 1) * ws, n);
        a2 += x[(j + 2) * xs] * load(w + (j + 2) * ws, n);
        a3 += x[(j + 3) * xs] * load(w + (j + 3) * ws, n);
    }
    for (; j < count; ++j) acc += x[j * xs] * load(w + j * ws, n);
    return (acc + a1) + (a2 + a3);
}

// One row's packed operands p [4, 3 H]: blade 0 = bias + sca w0, blades 1-3 = vec's components through w1.
template <typename T, typename V = typename Lanes<T>::V>
DH_INLINE void input_maps(const T* vec, const T* sca, const MLPShape<T>& d, const MLPParams<T>& m, T* p) {
    const int64_t ld = 3 * d.H;
    over_packs<T>(ld, [&](int64_t o, auto n) DH_LAMBDA {
        store(p + o, weighted_sum<T>(sca, 1, m.w0.data() + o, ld, d.S, n, load(m.bias.data() + o, n)), n);
        DH_UNROLL for (int k = 0; k < 3; ++k) {
            store(p + (1 + k) * ld + o, weighted_sum<T>(vec + k, 3, m.w1.data() + o, ld, d.Cv, n), n);
        }
    });
}

template <typename T, typename V = typename Lanes<T>::V>
DH_INLINE V dot_pack(const T* a, const T* b, int64_t n_total) {
    V acc = {};
    over_packs<T>(n_total, [&](int64_t o, auto n) DH_LAMBDA { acc += load(a + o, n) * load(b + o, n); });
    return acc;
}

// ``work``: (12 + 4 + 6) H scratch values per call.
template <typename T, typename V = typename Lanes<T>::V>
DH_INLINE void compact_mlp_forward(const T* vec, const T* sca, const MLPShape<T>& d, const MLPParams<T>& m,
                                   const T* scale, const T* shift, const T* ln_scale, const T* last_w,
                                   const T* last_b, T* out_v, T* out_s, int64_t rows, T eps, bool ln,
                                   bool squared) {
    const int64_t H = d.H, ld = 3 * H;
    std::vector<T> scratch(22 * H);
    T *p = scratch.data(), *h = p + 4 * ld, *work = h + 4 * H;
    for (int64_t r = 0; r < rows; ++r) {
        input_maps<T>(vec + r * d.Cv * 3, sca + r * d.S, d, m, p);
        compact_layer_forward<T>(p, p + H, p + 2 * H, m.pw.data(), m.sg.data(), scale, shift, ln_scale,
                                              h, work, ld, ld, H, 1, H, eps, ln, squared);
        // the read: dot products over the hidden channels (nv and ns are too few to fill packs)
        for (int64_t j = 0; j < d.ns; ++j)
            out_s[r * d.ns + j] = last_b[d.nv + j] + lane_sum<T>(dot_pack<T>(h, m.last0t.data() + j * H, H));
        for (int64_t c = 0; c < d.nv; ++c)
            DH_UNROLL for (int k = 0; k < 3; ++k)
                out_v[(r * d.nv + c) * 3 + k] = lane_sum<T>(dot_pack<T>(h + (1 + k) * H, m.last1t.data() + c * H, H));
    }
}

// Parameter gradients of compact_mlp_backward, accumulated in the parameters' own layouts (null: not wanted, for
// the layer-norm scale when there is none).
template <typename T>
struct MLPGrads {
    T *maps[3], *right_b, *skip_b, *path_w, *norm_gate, *scale, *shift, *ln_scale, *last_w, *last_b;
};

// The backward of compact_mlp_forward from grad_v [rows, nv, 3] and grad_s [rows, ns]: grad_vec and grad_sca (each
// may be null: not wanted) and the parameter gradients g written.
template <typename T, typename V = typename Lanes<T>::V>
DH_INLINE void compact_mlp_backward(const T* grad_v, const T* grad_s, const T* vec, const T* sca,
                                    const MLPShape<T>& d, const MLPParams<T>& m, const T* scale, const T* shift,
                                    const T* ln_scale, T* grad_vec, T* grad_sca, const MLPGrads<T>& g,
                                    int64_t rows, T eps, bool ln, bool squared) {
    const int64_t H = d.H, ld = 3 * H, in = d.in();
    // per row: p, gp [4, 3 H]; h, gh [4, H]; the layer's work (20 H); grad_v by component [3, nv]
    std::vector<T> scratch(8 * ld + 8 * H + 20 * H + 3 * d.nv);
    T *p = scratch.data(), *gp = p + 4 * ld, *h = gp + 4 * ld, *gh = h + 4 * H, *work = gh + 4 * H,
      *gvk = work + 20 * H;
    // g is written: zeroed here, accumulated over the rows (some parts unpacked from acc at the end)
    for (T* t : g.maps) std::fill_n(t, 4 * in * H, T(0));
    for (T* t : {g.right_b, g.skip_b, g.ln_scale}) {
        if (t) std::fill_n(t, H, T(0));
    }
    for (T* t : {g.norm_gate, g.scale, g.shift}) std::fill_n(t, 4 * H, T(0));
    std::fill_n(g.path_w, NPATH * H, T(0));
    std::fill_n(g.last_w, 4 * H * d.O, T(0));
    std::fill_n(g.last_b, d.O, T(0));
    std::vector<T> acc(d.S * ld + d.Cv * ld + ld + NPATH * H + 4 * H + (d.ns + d.nv) * H, T(0));
    T *gw0 = acc.data(), *gw1 = gw0 + d.S * ld, *gbias = gw1 + d.Cv * ld, *gpw = gbias + ld, *gsg = gpw + NPATH * H,
      *gl0t = gsg + 4 * H, *gl1t = gl0t + d.ns * H;  // the last map's read columns, transposed as m.last0t, last1t
    for (int64_t r = 0; r < rows; ++r) {
        const T *vr = vec + r * d.Cv * 3, *sr = sca + r * d.S, *gs = grad_s + r * d.ns;
        for (int64_t c = 0; c < d.nv; ++c)
            for (int k = 0; k < 3; ++k) gvk[k * d.nv + c] = grad_v[(r * d.nv + c) * 3 + k];
        // the read's backward: the gradient of the layer's blades 0-3
        over_packs<T>(H, [&](int64_t i, auto n) DH_LAMBDA {
            store(gh + i, weighted_sum<T>(gs, 1, m.last0t.data() + i, H, d.ns, n), n);
            DH_UNROLL for (int k = 0; k < 3; ++k) {
                store(gh + (1 + k) * H + i, weighted_sum<T>(gvk + k * d.nv, 1, m.last1t.data() + i, H, d.nv, n), n);
            }
        });
        input_maps<T>(vr, sr, d, m, p);
        compact_layer_backward<T>(gh, p, p + H, p + 2 * H, m.pw.data(), m.sg.data(), scale, shift,
                                               ln_scale, gp, gp + H, gp + 2 * H, h, gpw, gsg, g.scale, g.shift,
                                               g.ln_scale, work, ld, ld, H, 1, H, eps, ln, squared);
        // the last map's gradients, over packs of hidden channels
        over_packs<T>(H, [&](int64_t i, auto n) DH_LAMBDA {
            const V h0 = load(h + i, n), h1 = load(h + H + i, n), h2 = load(h + 2 * H + i, n),
                    h3 = load(h + 3 * H + i, n);
            for (int64_t j = 0; j < d.ns; ++j) store(gl0t + j * H + i, load(gl0t + j * H + i, n) + gs[j] * h0, n);
            for (int64_t c = 0; c < d.nv; ++c) {
                const V a = gvk[c] * h1 + gvk[d.nv + c] * h2 + gvk[2 * d.nv + c] * h3;
                store(gl1t + c * H + i, load(gl1t + c * H + i, n) + a, n);
            }
        });
        for (int64_t j = 0; j < d.ns; ++j) g.last_b[d.nv + j] += gs[j];
        // the input maps' gradients: weights and biases accumulated, inputs written
        over_packs<T>(ld, [&](int64_t o, auto n) DH_LAMBDA {
            const V g0 = load(gp + o, n);
            store(gbias + o, load(gbias + o, n) + g0, n);
            for (int64_t i = 0; i < d.S; ++i) store(gw0 + i * ld + o, load(gw0 + i * ld + o, n) + sr[i] * g0, n);
            for (int64_t c = 0; c < d.Cv; ++c) {
                V a = load(gw1 + c * ld + o, n);
                DH_UNROLL for (int k = 0; k < 3; ++k) a += vr[c * 3 + k] * load(gp + (1 + k) * ld + o, n);
                store(gw1 + c * ld + o, a, n);
            }
        });
        if (grad_sca)
            for (int64_t i = 0; i < d.S; ++i)
                grad_sca[r * d.S + i] = lane_sum<T>(dot_pack<T>(gp, m.w0.data() + i * ld, ld));
        if (grad_vec)
            for (int64_t c = 0; c < d.Cv; ++c)
                DH_UNROLL for (int k = 0; k < 3; ++k)
                    grad_vec[(r * d.Cv + c) * 3 + k] =
                        lane_sum<T>(dot_pack<T>(gp + (1 + k) * ld, m.w1.data() + c * ld, ld));
    }
    const T half = T(1) / std::sqrt(T(2));
    for (int part = 0; part < 3; ++part) {
        const T f = part == 2 ? half : T(1);
        for (int64_t i = 0; i < d.S; ++i)
            for (int64_t k = 0; k < H; ++k) g.maps[part][(d.Cv + i) * H + k] += f * gw0[i * ld + part * H + k];
        for (int64_t c = 0; c < d.Cv; ++c)
            for (int64_t k = 0; k < H; ++k) g.maps[part][in * H + c * H + k] += f * gw1[c * ld + part * H + k];
    }
    for (int64_t k = 0; k < H; ++k) {
        g.right_b[k] += gbias[H + k];
        g.skip_b[k] += half * gbias[2 * H + k];
    }
    for (int64_t k = 0; k < H; ++k) {
        for (int64_t j = 0; j < d.ns; ++j) g.last_w[k * d.O + d.nv + j] += gl0t[j * H + k];
        for (int64_t c = 0; c < d.nv; ++c) g.last_w[H * d.O + k * d.O + c] += gl1t[c * H + k];
    }
    for (int64_t i = 0; i < NPATH * H; ++i) g.path_w[i] += half * gpw[i];
    for (int64_t i = 0; i < 4 * H; ++i) g.norm_gate[i] += gsg[i] * m.sg[i] * (T(1) - m.sg[i]);
}

// The exported entry points' shared part: the shapes, the derived parameters, and the (layer norm, invariant) case.
template <typename T>
struct MLPCall {
    MLPShape<T> d;
    MLPParams<T> m;
    int flags;

    MLPCall(int flags, const int64_t* dims, const T* left_w, const T* right_w, const T* right_b, const T* skip_w,
            const T* skip_b, const T* path_w, const T* norm_gate, const T* last_w)
        : d{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5]},
          m(d, std::vector<const T*>{left_w, right_w, skip_w}.data(), right_b, skip_b, path_w, norm_gate, last_w),
          flags(flags & 6) {}
};

template <typename T>
DH_INLINE void gate_norm_forward_any(int flags, const T* h, const T* scale, const T* shift, const T* ln_scale, T* out,
                                     int64_t stride, int64_t rows, int64_t C, T eps) {
    std::vector<T> work(4 * C);
#define DH_CASE(G, L, S)                                                                                 \
    case (G) | (L) << 1 | (S) << 2:                                                                      \
        return gate_norm_forward<T, G, L, S>(h, scale, shift, ln_scale, out, work.data(), stride, rows, C, eps);
    switch (flags) {
        DH_CASE(1, 1, 0) DH_CASE(1, 1, 1) DH_CASE(1, 0, 0) DH_CASE(1, 0, 1) DH_CASE(0, 1, 0)
    }
#undef DH_CASE
}

template <typename T>
DH_INLINE void gate_norm_backward_any(int flags, const T* grad, const T* h, const T* scale, const T* shift,
                                      const T* ln_scale, T* grad_h, T* grad_scale, T* grad_shift, T* grad_ln,
                                      int64_t stride, int64_t rows, int64_t C, T eps) {
    std::vector<T> work(18 * C);
#define DH_CASE(G, L, S)                                                                                             \
    case (G) | (L) << 1 | (S) << 2:                                                                                  \
        return gate_norm_backward<T, G, L, S>(grad, h, scale, shift, ln_scale, grad_h, grad_scale, grad_shift,      \
                                              grad_ln, work.data(), stride, rows, C, eps);
    switch (flags) {
        DH_CASE(1, 1, 0) DH_CASE(1, 1, 1) DH_CASE(1, 0, 0) DH_CASE(1, 0, 1) DH_CASE(0, 1, 0)
    }
#undef DH_CASE
}

}  // namespace

// The exported symbols, one per dtype (f32, f64), called through ctypes (native.py). flags: 1 gated, 2 layer norm,
// 4 squared-norm invariant.
#define DH_EXPORT(T, SUFFIX)                                                                                        \
    extern "C" DH_CLONES void product_forward_##SUFFIX(const T* a, const T* x, const T* w, const T* s,               \
                                                       const T* skip, T* out, int64_t stride, int64_t rows,          \
                                                       int64_t C, double eps2) {                                     \
        product_forward<T>(a, x, w, s, skip, out, stride, rows, C, T(eps2));                                         \
    }                                                                                                                \
    extern "C" DH_CLONES void product_backward_##SUFFIX(const T* grad, const T* a, const T* x, const T* w,           \
                                                        const T* s, T* grad_a, T* grad_x, T* grad_w, T* grad_s,     \
                                                        int64_t stride, int64_t rows, int64_t C, double eps2) {      \
        if (grad_w)                                                                                                  \
            product_backward<T, true>(grad, a, x, w, s, grad_a, grad_x, grad_w, grad_s, stride, rows, C, T(eps2));   \
        else                                                                                                         \
            product_backward<T, false>(grad, a, x, w, s, grad_a, grad_x, grad_w, grad_s, stride, rows, C, T(eps2));  \
    }                                                                                                                \
    extern "C" DH_CLONES void gate_norm_forward_##SUFFIX(int flags, const T* h, const T* scale, const T* shift,      \
                                                         const T* ln_scale, T* out, int64_t stride, int64_t rows,    \
                                                         int64_t C, double eps) {                                    \
        gate_norm_forward_any<T>(flags, h, scale, shift, ln_scale, out, stride, rows, C, T(eps));                    \
    }                                                                                                                \
    extern "C" DH_CLONES void gate_norm_backward_##SUFFIX(int flags, const T* grad, const T* h, const T* scale,      \
                                                          const T* shift, const T* ln_scale, T* grad_h,              \
                                                          T* grad_scale, T* grad_shift, T* grad_ln, int64_t stride,  \
                                                          int64_t rows, int64_t C, double eps) {                     \
        gate_norm_backward_any<T>(flags, grad, h, scale, shift, ln_scale, grad_h, grad_scale, grad_shift, grad_ln,   \
                                  stride, rows, C, T(eps));                                                          \
    }                                                                                                                \
    extern "C" DH_CLONES void compact_mlp_forward_##SUFFIX(                                                        \
        int flags, const int64_t* dims, const T* vec, const T* sca, const T* left_w, const T* right_w,              \
        const T* right_b, const T* skip_w, const T* skip_b, const T* path_w, const T* norm_gate, const T* scale,     \
        const T* shift, const T* ln_scale, const T* last_w, const T* last_b, T* out_v, T* out_s, int64_t rows,      \
        double eps) {                                                                                                \
        const MLPCall<T> call(flags, dims, left_w, right_w, right_b, skip_w, skip_b, path_w, norm_gate, last_w);    \
        compact_mlp_forward<T>(vec, sca, call.d, call.m, scale, shift, ln_scale, last_w, last_b, out_v, out_s, rows, \
                               T(eps), call.flags & 2, call.flags & 4);                                              \
    }                                                                                                                \
    extern "C" DH_CLONES void compact_mlp_backward_##SUFFIX(                                                       \
        int flags, const int64_t* dims, const T* grad_v, const T* grad_s, const T* vec, const T* sca,               \
        const T* left_w, const T* right_w, const T* right_b, const T* skip_w, const T* skip_b, const T* path_w,      \
        const T* norm_gate, const T* scale, const T* shift, const T* ln_scale, const T* last_w, T* grad_vec,         \
        T* grad_sca, T* g_left_w, T* g_right_w, T* g_right_b, T* g_skip_w, T* g_skip_b, T* g_path_w,                \
        T* g_norm_gate, T* g_scale, T* g_shift, T* g_ln_scale, T* g_last_w, T* g_last_b, int64_t rows,              \
        double eps) {                                                                                                \
        const MLPCall<T> call(flags, dims, left_w, right_w, right_b, skip_w, skip_b, path_w, norm_gate, last_w);    \
        const MLPGrads<T> g{{g_left_w, g_right_w, g_skip_w}, g_right_b, g_skip_b, g_path_w, g_norm_gate, g_scale,    \
                            g_shift, g_ln_scale, g_last_w, g_last_b};                                                \
        compact_mlp_backward<T>(grad_v, grad_s, vec, sca, call.d, call.m, scale, shift, ln_scale, grad_vec,          \
                                grad_sca, g, rows, T(eps), call.flags & 2, call.flags & 4);                          \
    }

DH_EXPORT(float, f32)
DH_EXPORT(double, f64)
