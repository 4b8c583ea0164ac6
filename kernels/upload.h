// The weights' way up to the GPU: a list of jobs (a host array to a device
// one, converted to BF16 on the way where asked), run once everything is
// allocated by several host threads, each with its own pinned staging
// buffers and stream, so that filling pinned memory (and converting) runs
// beside the transfers and on several cores. Host code (C++), used by the
// CUDA backend's creation.
#ifndef EMBER_CUDA_UPLOAD_H
#define EMBER_CUDA_UPLOAD_H

extern "C" {
#include "../engine/common.h"
}

#include <cuda_runtime.h>
#include <pthread.h>

struct up_job {
	void *dst;
	enum dtype to, from; // from itself or to BF16 (converted on the way)
	const void *src;
	size_t n;            // elements
	size_t first_chunk;  // chunks of the jobs before this one
};

struct uploader {
	struct up_job *jobs;
	size_t n_jobs, cap_jobs, chunks, bytes;
	int dev;
	// while running
	size_t next;         // the next chunk to take (under mu)
	pthread_mutex_t mu;
	cudaError_t error;   // the first failure
	const char *what;
	cudaError_t setup_error; // a thread that could not get its buffers
};

// dst[0..n) = elements [0, n) of src (of dtype from) as dtype to (BF16 or
// from itself), when upl_run runs. src must stay until then. Returns 0 or
// -ENOMEM.
int upl_add(struct uploader *u, void *dst, enum dtype to, enum dtype from, const void *src,
	    size_t n, char *err);

// Runs every job; returns the number of host threads used, or a negative
// errno with err set (the first failure; the other jobs may have run).
int upl_run(struct uploader *u, char *err);

// Frees the job list.
void upl_free(struct uploader *u);

// dst[0..n) = bf16(elements first.. of src, of dtype dt), rounded to nearest even.
void bf16_from(enum dtype dt, const void *src, size_t first, size_t n, uint16_t *dst);

#endif
