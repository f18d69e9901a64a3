/* The two hot loops of vai_q's calibration, fused: the "diffs" search's squared errors for every candidate
 * position in one pass over the tensor, and the half-up fake quantization at the chosen position.
 *
 * vidconv_deploy/fixpoint/native.py compiles this file on the machine that runs it and calls it through
 * ctypes (which releases the GIL, so the calibration's worker threads run it in parallel). The torch code
 * in arithmetic.py computes the same values; tests/test_native_kernel.py holds the two together.
 *
 * Float semantics: t = x * 2^p is exact (a power-of-two scale); nearbyint in the default rounding mode
 * (nothing here changes it) is half to even, torch.round; it vectorizes where roundeven does not; the residual
 * t - clamp(roundeven(t)) is exact; its squares are summed in float32 lanes within a block (BLOCK / LANES =
 * 128 terms per lane: relative error under 128 float32 roundings, 8e-6, at worst) and the blocks' sums in
 * double. Float32 partial sums keep the loop at the vector width (1.6x faster than converting every square
 * to double, ViC-T-sized tensors); torch sums the same squares in float32 too, so the errors agree to
 * float32 rounding, far inside the 1e-4 band (NEAR_TIE, arithmetic.py) in which torch's own sums decide.
 */
#include <stdint.h>

#define QMIN (-128.0f)
#define QMAX 127.0f
#define LANES 16
#define BLOCK 2048
#define MAX_SCOPE 16

static float pow2f(int e) {
    float s = 1.0f;
    for (; e > 0; e--) s *= 2.0f;
    for (; e < 0; e++) s *= 0.5f;
    return s;
}

static float clampq(float c) { return c < QMIN ? QMIN : (c > QMAX ? QMAX : c); }

/* errors[k] = sum_i (t_i - clamp(roundeven(t_i)))^2 with t_i = x_i * 2^(start + k), for k < scope (<= 16). */
int diffs_errors(const float *x, int64_t n, int start, int scope, double *errors) {
    if (scope < 1 || scope > MAX_SCOPE) return -1;
    float scale[MAX_SCOPE];
    double acc[MAX_SCOPE][LANES];
    for (int k = 0; k < scope; k++) {
        scale[k] = pow2f(start + k);
        for (int j = 0; j < LANES; j++) acc[k][j] = 0.0;
    }
    int64_t i = 0;
    for (; i + BLOCK <= n; i += BLOCK) {
        const float *b = x + i;
        for (int k = 0; k < scope; k++) {
            const float s = scale[k];
            float part[LANES] = {0};
            for (int m = 0; m < BLOCK; m += LANES) {
                for (int j = 0; j < LANES; j++) {
                    const float t = b[m + j] * s;
                    const float r = t - clampq(__builtin_nearbyintf(t));
                    part[j] += r * r;
                }
            }
            for (int j = 0; j < LANES; j++) acc[k][j] += (double)part[j];
        }
    }
    for (int k = 0; k < scope; k++) {
        double sum = 0.0;
        for (int64_t m = i; m < n; m++) {
            const float t = x[m] * scale[k];
            const float r = t - clampq(__builtin_nearbyintf(t));
            sum += (double)r * (double)r;
        }
        for (int j = 0; j < LANES; j++) sum += acc[k][j];
        errors[k] = sum;
    }
    return 0;
}

/* out_i = clamp(round_half_up(x_i * 2^pos)) * 2^-pos, half up as vai_q's method 2: roundeven, then one up
 * where it took a tie down (t - c == 0.5 exactly). */
void fake_quantize_half_up(const float *x, int64_t n, int pos, float *out) {
    const float s = pow2f(pos), inv = pow2f(-pos);
    for (int64_t i = 0; i < n; i++) {
        const float t = x[i] * s;
        float c = __builtin_nearbyintf(t);
        c += (t - c == 0.5f) ? 1.0f : 0.0f;
        out[i] = clampq(c) * inv;
    }
}
