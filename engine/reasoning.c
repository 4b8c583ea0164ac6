/* The reasoning split (reasoning.h): a small matcher of the two tags,
 * neither of which overlaps itself, so that a mismatch only ever restarts
 * at the byte that broke it. */
#include "reasoning.h"

#include <string.h>

static const char open_tag[] = REASON_OPEN, close_tag[] = REASON_CLOSE;
#define OPEN_LEN (sizeof open_tag - 1)
#define CLOSE_LEN (sizeof close_tag - 1)

bool reason_prompt_opens(const char *prompt, size_t n)
{
	while (n > 0 && (prompt[n - 1] == '\n' || prompt[n - 1] == ' ' || prompt[n - 1] == '\r' ||
			 prompt[n - 1] == '\t'))
		n--;
	return n >= OPEN_LEN && memcmp(prompt + n - OPEN_LEN, open_tag, OPEN_LEN) == 0;
}

void reason_init(struct reason_split *r)
{
	r->state = REASON_START;
	r->n_held = 0;
}

static void emit(reason_out out, void *arg, bool think, const char *p, size_t n)
{
	if (out && n > 0)
		out(arg, think, p, n);
}

void reason_feed(struct reason_split *r, const char *text, size_t n, bool final, reason_out out,
		 void *arg)
{
	size_t i = 0;
	if (r->state == REASON_START) {
		/* "<think>" at the very start is the model opening the block again */
		while (i < n && r->n_held < OPEN_LEN && text[i] == open_tag[r->n_held])
			r->held[r->n_held++] = text[i++];
		if (r->n_held == OPEN_LEN) {
			r->n_held = 0;
			r->state = REASON_THINK;
		} else if (i < n || final) {
			/* not the open tag: what was held is reasoning, and may begin the close */
			char again[OPEN_LEN];
			size_t k = r->n_held;
			memcpy(again, r->held, k);
			r->n_held = 0;
			r->state = REASON_THINK;
			reason_feed(r, again, k, false, out, arg);
		} else {
			return; /* all of it may still be the open tag */
		}
	}
	if (r->state == REASON_THINK) {
		size_t run = i; /* reasoning bytes text[run .. i) not yet out */
		for (; i < n; i++) {
			char c = text[i];
			if (c == close_tag[r->n_held]) {
				if (r->n_held == 0) {
					emit(out, arg, true, text + run, i - run);
					run = i + 1;
				} else {
					run = i + 1;
				}
				r->held[r->n_held++] = c;
				if (r->n_held == CLOSE_LEN) {
					r->n_held = 0;
					r->state = REASON_ANSWER;
					i++;
					break;
				}
				continue;
			}
			if (r->n_held > 0) { /* a near miss: its bytes were reasoning */
				emit(out, arg, true, r->held, r->n_held);
				r->n_held = 0;
				run = i;
				if (c == close_tag[0]) {
					r->held[r->n_held++] = c;
					run = i + 1;
				}
			}
		}
		if (r->state == REASON_THINK) {
			emit(out, arg, true, text + run, i - run);
			if (final) {
				emit(out, arg, true, r->held, r->n_held);
				r->n_held = 0;
			}
			return;
		}
	}
	emit(out, arg, false, text + i, n - i);
}
