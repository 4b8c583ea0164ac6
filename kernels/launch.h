// How the kernels of a step are launched (C++, the .cu files): with
// programmatic dependent launch where the GPU has it (Hopper on), so that a
// kernel's blocks start while the kernel before it drains, and inside a
// CUDA graph too. Every kernel launched so calls pdl_start() and then
// pdl_wait() before it touches memory that an earlier kernel writes or
// reads. Only reads of what no kernel writes may come before: the weights,
// the rotary tables, and the step's arrays (entries, block tables), which
// the host copies in before the step's first kernel starts.
#pragma once

#include <cuda_runtime.h>

// Lets the next kernel's blocks be scheduled.
__device__ __forceinline__ void pdl_start()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Until the kernel before has finished and its writes are seen.
__device__ __forceinline__ void pdl_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

static inline bool pdl_enabled()
{
	static const bool on = [] {
		int dev = 0, major = 0;
		if (cudaGetDevice(&dev) != cudaSuccess ||
		    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess)
			return false;
		return major >= 9;
	}();
	return on;
}

// kernel<<<grid, block, smem, s>>>(args...), returning the launch's result.
template <typename... P, typename... A>
cudaError_t launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
		   A... args)
{
	cudaLaunchAttribute at[1];
	at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
	at[0].val.programmaticStreamSerializationAllowed = 1;
	cudaLaunchConfig_t c = {};
	c.gridDim = grid;
	c.blockDim = block;
	c.dynamicSmemBytes = smem;
	c.stream = s;
	c.attrs = at;
	c.numAttrs = pdl_enabled() ? 1 : 0;
	return cudaLaunchKernelEx(&c, kernel, args...);
}
