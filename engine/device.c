/* The registry of devices (device.h). */
#include "device.h"

#include <stdio.h>
#include <string.h>

/* In the order auto tries them: a GPU when one is visible, else the CPU. */
static const struct device *const devices[] = {
#ifdef EMBER_CUDA
	&cuda_device,
#endif
	&cpu_device,
};
#define N_DEVICES ((int)(sizeof devices / sizeof devices[0]))

/* The backends a build can be without, and what it takes to have them. */
static const struct {
	const char *name, *why;
} absent[] = {
#ifndef EMBER_CUDA
	{"cuda", "this ember was built without CUDA (nvcc was not found at build time)"},
#endif
	{NULL, NULL},
};

int device_parse(const char *s, const struct device **out, char *err)
{
	*out = NULL;
	if (strcmp(s, "auto") == 0)
		return 0;
	for (int i = 0; i < N_DEVICES; i++)
		if (strcmp(s, devices[i]->name) == 0) {
			*out = devices[i];
			return 0;
		}
	for (int i = 0; absent[i].name; i++)
		if (strcmp(s, absent[i].name) == 0)
			return ember_err(err, -1, "--device %s: %s; use --device cpu", s, absent[i].why);
	char names[128] = "";
	size_t len = 0;
	for (int i = 0; i < N_DEVICES && len < sizeof names; i++)
		len += (size_t)snprintf(names + len, sizeof names - len, "%s, ", devices[i]->name);
	return ember_err(err, -1, "--device %s: this build has %sor auto", s, names);
}

const struct device *device_resolve(const struct device *d)
{
	if (d)
		return d;
	for (int i = 0; i < N_DEVICES; i++)
		if (devices[i]->count() > 0)
			return devices[i];
	return &cpu_device;
}

int device_backend_create(const struct device *d, const struct model *m,
			  const struct device_opts *o, struct backend **out, char *err)
{
	if (o->stats)
		*o->stats = (struct device_stats){0};
	*out = NULL;
	return device_resolve(d)->create(m, o, out, err);
}
