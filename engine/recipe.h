/* Model recipes: what a family of architectures (engine/arch/, one file
 * each) is made of. A recipe reads its family's config.json fields and,
 * when the model opens, binds its tensors by name (shapes checked) and
 * writes the model's program (program.h): its buffers and its layers as
 * operations. The rb_ helpers here are what recipes build with. Runs in
 * the worker (configure also in the supervisor). */
#ifndef EMBER_RECIPE_H
#define EMBER_RECIPE_H

#include "model.h"

struct recipe {
	const char *family;                /* "llama" */
	const char *const *architectures;  /* config.json names it serves, NULL-ended */
	/* Reads the family's fields of config.json's root object into c->p,
	 * after the common ones are in c. Returns 0 or -EINVAL with err
	 * naming the field or the feature that is not supported. */
	int (*configure)(struct json_t *root, struct model_config *c, char *err);
	/* Binds m's tensors and writes m->prog with the rb_ helpers. Returns 0
	 * or a negative errno with err naming the tensor at fault; model_open
	 * frees what was built on failure. */
	int (*build)(struct model *m, char *err);
};

/* Every recipe (engine/arch/arch.c), NULL-ended. */
extern const struct recipe *const arch_recipes[];

/* The recipe that serves config.json's architecture name, or NULL. */
const struct recipe *recipe_find(const char *architecture);

/* The names every recipe serves, ", "-separated, into buf[0..n). */
void recipe_names(char *buf, size_t n);

/* ---- building a program (for recipes) ------------------------------------
 * Each returns the index of what it added, or a negative errno with err
 * set (the tensor missing, of another shape, or no memory). */

/* A new weight of no parts yet, for gemms over inputs of cols values. */
int rb_weight(struct model *m, int cols, char *err);

/* Appends tensor `name` of shape [rows, cols] as the next part of weight
 * w, with the vector tensor bias_name of [rows] as its bias (converted to
 * f32), or no bias when bias_name is NULL. Returns 0. */
int rb_part(struct model *m, int w, const char *name, int rows, const char *bias_name, char *err);

/* A weight that is weight other again (a tied LM head): the same parts,
 * marked as its alias so that backends store them once. */
int rb_alias(struct model *m, int other, char *err);

/* The vector tensor `name` of shape [n], converted to f32. */
int rb_vector(struct model *m, const char *name, int n, char *err);

/* A per-token buffer of width values. */
int rb_buffer(struct model *m, int width, char *err);

/* The operations (program.h says what each computes), appended to the
 * body until rb_head, then to the head. Buffers are rb_buffer's, or
 * OP_NONE for no residual add, or OP_LOGITS for the head's output. */
int rb_embed(struct model *m, int w, int out, char *err);
int rb_rmsnorm(struct model *m, int x, int add, int vec, int out, char *err);
int rb_gemm(struct model *m, int in, int w, int out, char *err);
int rb_rope_kv(struct model *m, int qkv, int layer, char *err);
int rb_attention(struct model *m, int qkv, int layer, int out, char *err);
int rb_swiglu(struct model *m, int in, int out, char *err);

/* Ends the body: the ops appended after this are the head, which runs on
 * the logits rows only, starting with an OP_RMSNORM. */
void rb_head(struct model *m);

/* Checks the program that build wrote against itself (every buffer,
 * weight and vector in range and of matching widths, the head's shape),
 * marks the buffers gemms read and counts the bytes a token reads.
 * Returns 0 or -EINVAL naming the op at fault. Called by model_open. */
int rb_finish(struct model *m, char *err);

#endif
