// The uploader (upload.h): STAGE_BYTES chunks of the jobs, taken in turn
// by up to UPLOAD_THREADS host threads.
#include "upload.h"

#include "check.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define STAGE_BYTES ((size_t)16 << 20)
#define STAGES 2         // per upload thread
#define UPLOAD_THREADS 4 // at most; 128 MB of pinned staging in all

void bf16_from(enum dtype dt, const void *src, size_t first, size_t n, uint16_t *dst)
{
	for (size_t i = 0; i < n; i++) {
		float f = dtype_load_f32(dt, (const uint8_t *)src, first + i);
		uint32_t u;
		memcpy(&u, &f, 4);
		u += 0x7fff + ((u >> 16) & 1); // round to nearest even
		dst[i] = (uint16_t)(u >> 16);
	}
}

static size_t job_per_chunk(const struct up_job *j)
{
	return STAGE_BYTES / dtype_size(j->to);
}

int upl_add(struct uploader *u, void *dst, enum dtype to, enum dtype from, const void *src,
	    size_t n, char *err)
{
	if (u->n_jobs == u->cap_jobs) {
		size_t cap = u->cap_jobs ? 2 * u->cap_jobs : 64;
		struct up_job *j = (struct up_job *)realloc(u->jobs, cap * sizeof *j);
		if (!j)
			return ember_err(err, -ENOMEM, "out of memory");
		u->jobs = j;
		u->cap_jobs = cap;
	}
	struct up_job *j = &u->jobs[u->n_jobs++];
	*j = (struct up_job){dst, to, from, src, n, u->chunks};
	u->chunks += (n + job_per_chunk(j) - 1) / job_per_chunk(j);
	u->bytes += n * dtype_size(to);
	return 0;
}

void upl_free(struct uploader *u)
{
	free(u->jobs);
	u->jobs = nullptr;
	u->n_jobs = u->cap_jobs = 0;
}

static void up_fail(struct uploader *u, cudaError_t e, const char *what)
{
	pthread_mutex_lock(&u->mu);
	if (u->error == cudaSuccess) {
		u->error = e;
		u->what = what;
	}
	pthread_mutex_unlock(&u->mu);
}

// One thread's share: its stages, its stream, chunks taken in turn.
static void *up_thread(void *arg)
{
	struct uploader *u = (struct uploader *)arg;
	void *stage[STAGES] = {};
	cudaEvent_t done[STAGES] = {};
	cudaStream_t st = nullptr;
	cudaError_t e = cudaSetDevice(u->dev);
	if (e == cudaSuccess)
		e = cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
	for (int i = 0; i < STAGES && e == cudaSuccess; i++) {
		e = cudaHostAlloc(&stage[i], STAGE_BYTES, cudaHostAllocDefault);
		if (e == cudaSuccess)
			e = cudaEventCreateWithFlags(&done[i], cudaEventDisableTiming);
	}
	bool ready = e == cudaSuccess;
	if (!ready) { // the other threads go on without this one
		pthread_mutex_lock(&u->mu);
		u->setup_error = e;
		pthread_mutex_unlock(&u->mu);
	}
	const char *what = "";
	size_t j = 0;
	for (int turn = 0; e == cudaSuccess; turn++) {
		pthread_mutex_lock(&u->mu);
		size_t c = u->next++;
		bool stop = c >= u->chunks || u->error != cudaSuccess;
		pthread_mutex_unlock(&u->mu);
		if (stop)
			break;
		while (j + 1 < u->n_jobs && u->jobs[j + 1].first_chunk <= c) // chunks rise
			j++;
		const struct up_job *job = &u->jobs[j];
		size_t per = job_per_chunk(job), esz = dtype_size(job->to);
		size_t at = (c - job->first_chunk) * per, k = job->n - at < per ? job->n - at : per;
		int i = turn % STAGES;
		what = "cudaEventSynchronize(staging)";
		if ((e = cudaEventSynchronize(done[i])) != cudaSuccess)
			break;
		if (job->to == job->from)
			memcpy(stage[i], (const char *)job->src + at * esz, k * esz);
		else
			bf16_from(job->from, job->src, at, k, (uint16_t *)stage[i]);
		what = "cudaMemcpyAsync(weights)";
		e = cudaMemcpyAsync((char *)job->dst + at * esz, stage[i], k * esz,
				    cudaMemcpyHostToDevice, st);
		if (e != cudaSuccess)
			break;
		what = "cudaEventRecord(staging)";
		e = cudaEventRecord(done[i], st);
	}
	if (e != cudaSuccess && ready)
		up_fail(u, e, what);
	// The staging buffers are read before they go; failures here change
	// nothing of what was uploaded or reported.
	if (st)
		(void)cudaStreamSynchronize(st);
	for (int i = 0; i < STAGES; i++) {
		if (stage[i])
			(void)cudaFreeHost(stage[i]);
		if (done[i])
			(void)cudaEventDestroy(done[i]);
	}
	if (st)
		(void)cudaStreamDestroy(st);
	return nullptr;
}

int upl_run(struct uploader *u, char *err)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	int n = cpus < 1 ? 1 : cpus < UPLOAD_THREADS ? (int)cpus : UPLOAD_THREADS;
	if ((size_t)n > u->chunks)
		n = u->chunks > 0 ? (int)u->chunks : 1;
	pthread_t th[UPLOAD_THREADS];
	pthread_mutex_init(&u->mu, nullptr);
	u->next = 0;
	u->error = u->setup_error = cudaSuccess;
	int started = 0;
	for (; started < n; started++)
		if (pthread_create(&th[started], nullptr, up_thread, u) != 0)
			break;
	if (started == 0)
		up_thread(u); // no thread could start: this one does it all
	for (int i = 0; i < started; i++)
		pthread_join(th[i], nullptr);
	pthread_mutex_destroy(&u->mu);
	if (u->error != cudaSuccess)
		return ember_err(err, u->error == cudaErrorMemoryAllocation ? -ENOMEM : -EIO,
				 "uploading the weights: %s: %s", u->what, cudaGetErrorString(u->error));
	if (u->next < u->chunks) // no thread got its buffers
		return ember_err(err, -ENOMEM, "pinned staging memory: %s",
				 cudaGetErrorString(u->setup_error));
	return started > 0 ? started : 1;
}
