/* Communication kernels of a tensor-parallel group (src/cuda/oneshot.rs), as C launchers
 * the Rust side calls (bindgen reads this file beside launchers.h). Same conventions as
 * launchers.h: each launcher enqueues on `stream` and returns the cudaError_t as an int. */
#ifndef VIBESERVE_COMM_H
#define VIBESERVE_COMM_H
#include <stdint.h>

#include "launchers.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Most ranks the one-shot all-reduce serves (the GPUs of one host). */
#define VS_MAX_RANKS 8

/* Every rank's exchange buffer and flag array, reachable from this rank through peer
 * access (this rank's own entries are its local buffers). */
typedef struct {
  const float *exchange[VS_MAX_RANKS];
  int *flags[VS_MAX_RANKS];
} vs_peers;

/* One-shot all-reduce over peer memory: data[0..n) (f32, n % 4 == 0, n <= cap) becomes
 * the sum of every rank's data, added in rank order so that every rank holds the same
 * bits (with either kernel). All ranks must make the same sequence of calls with the
 * same `blocks` (<= max_blocks) and `push`. When a peer does not answer within
 * timeout_ns, *error becomes 1 and the sum is not valid.
 * Pull (push = 0): each rank copies its data into its exchange slot (two slots of cap
 * floats, alternating by call), signals every peer's flags[rank * max_blocks + block],
 * waits for every peer's signal, then reads the peers' slots (`blocks` blocks).
 * Push (push = 1, Lamport style; `exchange` unused): each rank writes its data into slot
 * `rank` of every peer's inbox (peers.exchange[p]: two inboxes of world slots of cap
 * floats, filled with 0xffffffff bits before the first call) and polls its own inbox
 * until every peer's values have arrived: the values are the flags. It always runs
 * max_blocks blocks, so each thread owns the same elements and each block's epoch stays
 * in step. `early`: programmatic dependent launch (see launchers.h). */
int vs_allreduce_peers(vs_stream stream, float *data, int n, float *exchange, vs_peers peers,
                       int world, int rank, int cap, int *epochs, int *error,
                       long long timeout_ns, int max_blocks, int blocks, int threads, int push,
                       int early);

#ifdef __cplusplus
}
#endif
#endif
