/* The recipe of Llama and Qwen2 (transformers' modeling_llama and
 * modeling_qwen2): pre-norm decoder layers of grouped-query attention with
 * rotary embeddings and a SwiGLU MLP. What their config.json adds to the
 * common fields, their tensors, and their layer as operations. Runs in the
 * worker (configure also in the supervisor). */
#include "../recipe.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

static int llama_configure(json_t *root, struct model_config *c, char *err)
{
	struct llama_params *p = &c->p.llama;
	bool attention_bias = false, mlp_bias = false, sliding = false;
	int rc;
	if ((rc = cfg_get_bool(root, "attention_bias", &attention_bias, err)) < 0 ||
	    (rc = cfg_get_bool(root, "mlp_bias", &mlp_bias, err)) < 0 ||
	    (rc = cfg_get_bool(root, "use_sliding_window", &sliding, err)) < 0)
		return rc;
	if (strcmp(c->arch_name, "Qwen2ForCausalLM") == 0) {
		if (sliding)
			return ember_err(err, -EINVAL, "config.json: use_sliding_window is not supported");
		/* Qwen2 always has q/k/v biases and no others. */
		*p = (struct llama_params){.attn_bias = true};
	} else {
		*p = (struct llama_params){attention_bias, attention_bias, mlp_bias};
	}
	return 0;
}

/* The program's buffers, (tokens, width) each. */
struct bufs {
	int x;    /* (hidden) the residual stream */
	int xn;   /* (hidden) a norm's output: the next gemm's input */
	int qkv;  /* (q_dim + 2 kv_dim) q, k and v side by side */
	int att;  /* (q_dim) attention's output */
	int proj; /* (hidden) o_proj's or down_proj's output, added to x by the next norm */
	int gu;   /* (2 intermediate) gate and up side by side */
	int act;  /* (intermediate) silu(gate) * up */
};

/* model.layers.<l>.<suffix> into n. */
static const char *lname(char *n, size_t size, int l, const char *suffix)
{
	snprintf(n, size, "model.layers.%d.%s", l, suffix);
	return n;
}

static int build_layer(struct model *m, int l, const struct bufs *b, char *err)
{
	const struct model_config *c = &m->cfg;
	const struct llama_params *p = &c->p.llama;
	int q_dim = c->n_heads * c->head_dim, kv_dim = c->n_kv_heads * c->head_dim;
	int H = c->hidden, I = c->intermediate;
	char n[128], bn[128];
#define NAME(suffix) lname(n, sizeof n, l, suffix)
#define BIAS(on, suffix) ((on) ? lname(bn, sizeof bn, l, suffix) : NULL)
	int attn_norm, mlp_norm, qkv, o, gu, down, rc;
	if ((rc = attn_norm = rb_vector(m, NAME("input_layernorm.weight"), H, err)) < 0 ||
	    (rc = mlp_norm = rb_vector(m, NAME("post_attention_layernorm.weight"), H, err)) < 0 ||
	    (rc = qkv = rb_weight(m, H, err)) < 0 ||
	    (rc = rb_part(m, qkv, NAME("self_attn.q_proj.weight"), q_dim,
			  BIAS(p->attn_bias, "self_attn.q_proj.bias"), err)) < 0 ||
	    (rc = rb_part(m, qkv, NAME("self_attn.k_proj.weight"), kv_dim,
			  BIAS(p->attn_bias, "self_attn.k_proj.bias"), err)) < 0 ||
	    (rc = rb_part(m, qkv, NAME("self_attn.v_proj.weight"), kv_dim,
			  BIAS(p->attn_bias, "self_attn.v_proj.bias"), err)) < 0 ||
	    (rc = o = rb_weight(m, q_dim, err)) < 0 ||
	    (rc = rb_part(m, o, NAME("self_attn.o_proj.weight"), H,
			  BIAS(p->attn_out_bias, "self_attn.o_proj.bias"), err)) < 0 ||
	    (rc = gu = rb_weight(m, H, err)) < 0 ||
	    (rc = rb_part(m, gu, NAME("mlp.gate_proj.weight"), I,
			  BIAS(p->mlp_bias, "mlp.gate_proj.bias"), err)) < 0 ||
	    (rc = rb_part(m, gu, NAME("mlp.up_proj.weight"), I, BIAS(p->mlp_bias, "mlp.up_proj.bias"),
			  err)) < 0 ||
	    (rc = down = rb_weight(m, I, err)) < 0 ||
	    (rc = rb_part(m, down, NAME("mlp.down_proj.weight"), H,
			  BIAS(p->mlp_bias, "mlp.down_proj.bias"), err)) < 0)
		return rc;
#undef BIAS
#undef NAME
	/* The first layer's norm has no residual to add; the others add the
	 * down projection of the layer before. */
	if ((rc = rb_rmsnorm(m, b->x, l ? b->proj : OP_NONE, attn_norm, b->xn, err)) < 0 ||
	    (rc = rb_gemm(m, b->xn, qkv, b->qkv, err)) < 0 ||
	    (rc = rb_rope_kv(m, b->qkv, l, err)) < 0 ||
	    (rc = rb_attention(m, b->qkv, l, b->att, err)) < 0 ||
	    (rc = rb_gemm(m, b->att, o, b->proj, err)) < 0 ||
	    (rc = rb_rmsnorm(m, b->x, b->proj, mlp_norm, b->xn, err)) < 0 ||
	    (rc = rb_gemm(m, b->xn, gu, b->gu, err)) < 0 ||
	    (rc = rb_swiglu(m, b->gu, b->act, err)) < 0 ||
	    (rc = rb_gemm(m, b->act, down, b->proj, err)) < 0)
		return rc;
	return 0;
}

static int llama_build(struct model *m, char *err)
{
	const struct model_config *c = &m->cfg;
	struct program *p = &m->prog;
	int q_dim = c->n_heads * c->head_dim, kv_dim = c->n_kv_heads * c->head_dim;
	int H = c->hidden;
	p->eps = c->rms_eps;
	p->attn = (struct attn_shape){c->n_heads, c->n_kv_heads, c->head_dim};
	p->kv = (struct kv_layout){c->n_layers, 2, {kv_dim, kv_dim}};
	struct bufs b;
	int rc;
	if ((rc = b.x = rb_buffer(m, H, err)) < 0 || (rc = b.xn = rb_buffer(m, H, err)) < 0 ||
	    (rc = b.qkv = rb_buffer(m, q_dim + 2 * kv_dim, err)) < 0 ||
	    (rc = b.att = rb_buffer(m, q_dim, err)) < 0 || (rc = b.proj = rb_buffer(m, H, err)) < 0 ||
	    (rc = b.gu = rb_buffer(m, 2 * c->intermediate, err)) < 0 ||
	    (rc = b.act = rb_buffer(m, c->intermediate, err)) < 0)
		return rc;
	int embed, norm, head;
	if ((rc = embed = rb_weight(m, H, err)) < 0 ||
	    (rc = rb_part(m, embed, "model.embed_tokens.weight", c->vocab, NULL, err)) < 0 ||
	    (rc = norm = rb_vector(m, "model.norm.weight", H, err)) < 0 ||
	    (rc = rb_embed(m, embed, b.x, err)) < 0)
		return rc;
	for (int l = 0; l < c->n_layers; l++)
		if ((rc = build_layer(m, l, &b, err)) < 0)
			return rc;
	if (c->tie_embeddings)
		head = rb_alias(m, embed, err);
	else if ((head = rb_weight(m, H, err)) >= 0 &&
		 (rc = rb_part(m, head, "lm_head.weight", c->vocab, NULL, err)) < 0)
		head = rc;
	if (head < 0)
		return head;
	rb_head(m);
	if ((rc = rb_rmsnorm(m, b.x, b.proj, norm, b.xn, err)) < 0 ||
	    (rc = rb_gemm(m, b.xn, head, OP_LOGITS, err)) < 0)
		return rc;
	return 0;
}

static const char *const llama_architectures[] = {"LlamaForCausalLM", "Qwen2ForCausalLM", NULL};

const struct recipe arch_llama = {
	.family = "llama",
	.architectures = llama_architectures,
	.configure = llama_configure,
	.build = llama_build,
};
