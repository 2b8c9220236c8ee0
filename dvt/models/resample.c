/* The query side of relationship reuse's grid resampling R (dvt/models/reuse.py), for CPU inference.
 *
 * R maps an s x s grid to a d x d grid (d > s). Along one axis it is a (d, s) matrix whose rows have
 * at most two non-zero weights (nearest upsampling by an integer factor >= 2, then average pooling
 * over bins of at most 3 cells, so a bin never reaches three source cells): output j =
 * w0[j] * input[i0[j]] + w1[j] * input[i1[j]]. On the 2-D grid R is that along rows and along
 * columns. Dense, the query side of one (N_d x N_d) relation map is a (N_d, N_u) @ (N_u, N_d)
 * product, 2 500 x 26 multiply-adds for 5x5 -> 7x7; applied as two sparse passes it is
 * (s d + d d) x 2 x N_d, a tenth of that, and each pass runs over contiguous rows of N_d floats.
 *
 * Input: n * C maps (1 + s*s query rows, nk columns), already resampled along the keys.
 * Output: map (b, c) goes to out + (c / H) * layer_stride + b * image_stride + (c % H) * (1 + d*d) * nk,
 * so that the caller can lay the maps out layer by layer ((L, B, H, N_d, N_d), c = l * H + h).
 * Row 0 (the cls query) is copied; the patch rows are resampled. Each map is computed alone, in a
 * fixed order: the result for an image does not depend on the other images of the batch.
 */
#include <stddef.h>

void dvt_resample_queries(const float *restrict in, float *restrict out, long n, int C, int H,
                          long layer_stride, long image_stride, int s, int d, int nk,
                          const int *i0, const int *i1, const float *w0, const float *w1,
                          float *restrict scratch /* s * d * nk floats */) {
    const long nu = (long)s * s + 1, nd = (long)d * d + 1;
    for (long b = 0; b < n; ++b) {
        for (int c = 0; c < C; ++c) {
            const float *x = in + (b * C + c) * nu * nk;
            float *y = out + (c / H) * layer_stride + b * image_stride + (long)(c % H) * nd * nk;
            for (int k = 0; k < nk; ++k) y[k] = x[k];
            /* Along the column of the query grid: (s rows, s cols) -> (s rows, d cols) into scratch. */
            for (int r = 0; r < s; ++r) {
                const float *row = x + (1 + (long)r * s) * nk;
                for (int j = 0; j < d; ++j) {
                    const float *p0 = row + (long)i0[j] * nk, *p1 = row + (long)i1[j] * nk;
                    const float a0 = w0[j], a1 = w1[j];
                    float *o = scratch + ((long)r * d + j) * nk;
                    for (int k = 0; k < nk; ++k) o[k] = a0 * p0[k] + a1 * p1[k];
                }
            }
            /* Along the row: (s rows, d cols) -> (d rows, d cols), straight into the output. */
            for (int i = 0; i < d; ++i) {
                const float *p0 = scratch + (long)i0[i] * d * nk, *p1 = scratch + (long)i1[i] * d * nk;
                const float a0 = w0[i], a1 = w1[i];
                float *o = y + (1 + (long)i * d) * nk;
                for (long k = 0; k < (long)d * nk; ++k) o[k] = a0 * p0[k] + a1 * p1[k];
            }
        }
    }
}
