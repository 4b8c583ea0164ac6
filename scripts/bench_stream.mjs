// End to end under load: N concurrent streamed chat completions through
// Caddy to emberd's pool (one worker, with a slot for every stream, so
// that all of them decode in one batch), as OpenAI SDKs send them. Prints
// the time to first token and the inter-token latency (p50, p95, p99 over
// every stream), and the aggregate generated tokens/s over the whole run.
//   node scripts/bench_stream.mjs BUILD_DIR MODEL_DIR [--streams 64] [--tokens 128]
//        [--rounds 2] [-- WORKER_ARGS...]    (WORKER_ARGS: e.g. --device cuda)
// The model directory needs a tokenizer (make's .done-bench models have one).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ctx, start, startCaddy, waitFor, cleanup } from '../tests/http/lib.mjs';

const argv = process.argv.slice(2);
const dash = argv.indexOf('--');
const mine = dash < 0 ? argv : argv.slice(0, dash);
const workerArgs = dash < 0 ? [] : argv.slice(dash + 1);
const [build, modelDir] = mine.slice(0, 2).map((p) => p && path.resolve(p)); // start() runs in ctx.dir
const opt = (name, dflt) => {
	const i = mine.indexOf(name);
	return i < 0 ? dflt : Number(mine[i + 1]);
};
const streams = opt('--streams', 64), tokens = opt('--tokens', 128), rounds = opt('--rounds', 2);
if (!build || !modelDir || !(streams > 0) || !(tokens > 0) || !(rounds > 0)) {
	console.error('usage: bench_stream.mjs BUILD_DIR MODEL_DIR [--streams N] [--tokens N] [--rounds N] [-- WORKER_ARGS]');
	process.exit(2);
}

// One streamed chat: when each content delta arrived (ms after sending),
// and the completion tokens the usage chunk counts.
async function chat(base, i) {
	const t0 = performance.now();
	const r = await fetch(`${base}/v1/chat/completions`, {
		method: 'POST', headers: { 'Content-Type': 'application/json' },
		body: JSON.stringify({
			messages: [{ role: 'user', content: `Stream ${i}: tell me a long story about the sea.` }],
			max_tokens: tokens, stream: true, stream_options: { include_usage: true }, seed: i,
		}),
	});
	if (r.status !== 200) throw new Error(`stream ${i}: HTTP ${r.status}: ${await r.text()}`);
	const times = [];
	let buf = '', usage = null;
	const dec = new TextDecoder();
	for await (const part of r.body) {
		buf += dec.decode(part, { stream: true });
		let nl;
		while ((nl = buf.indexOf('\n\n')) >= 0) {
			const ev = buf.slice(0, nl);
			buf = buf.slice(nl + 2);
			if (!ev.startsWith('data: ') || ev === 'data: [DONE]') continue;
			const j = JSON.parse(ev.slice(6));
			if (j.usage) usage = j.usage;
			const d = j.choices?.[0]?.delta;
			if (d && d.content) times.push(performance.now() - t0);
		}
	}
	if (!usage || times.length === 0) throw new Error(`stream ${i}: no usage or no text`);
	return { times, tokens: usage.completion_tokens };
}

const pct = (a, p) => {
	const s = [...a].sort((x, y) => x - y);
	return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] : NaN;
};

ctx.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ember-bench-stream-'));
try {
	const sock = path.join(ctx.dir, 'ember.sock');
	start('emberd', path.join(build, 'emberd'), [
		'--model', modelDir, '--listen', sock, '--worker', path.join(build, 'ember-worker'),
		'--min-workers', '1', '--max-workers', '1', '--spare', '0', '--slots', String(streams),
		'--', '--queue-timeout', '600', ...workerArgs]);
	await waitFor('emberd', () => fs.existsSync(sock), 120000);
	const base = await startCaddy('caddy', sock, false);
	await waitFor('a ready worker', async () => (await fetch(`${base}/health`)).status === 200, 300000);
	await chat(base, 0); // warm
	let ttft = [], itl = [], generated = 0, wall = 0, done = 0;
	for (let r = 0; r < rounds; r++) {
		const t0 = performance.now();
		const res = await Promise.all(Array.from({ length: streams }, (_, i) => chat(base, 1 + r * streams + i)));
		wall += performance.now() - t0;
		for (const x of res) {
			ttft.push(x.times[0]);
			for (let k = 1; k < x.times.length; k++) itl.push(x.times[k] - x.times[k - 1]);
			generated += x.tokens;
			done++;
		}
	}
	const ms = (x) => `${x.toFixed(1)} ms`;
	const row = (name, a) => console.log(`  ${name.padEnd(24)} p50 ${ms(pct(a, 50)).padStart(10)}  p95 ${ms(pct(a, 95)).padStart(10)}  p99 ${ms(pct(a, 99)).padStart(10)}`);
	console.log(`${streams} concurrent streamed chats of up to ${tokens} tokens, ${path.basename(modelDir)}, ` +
		`through Caddy and emberd${workerArgs.length ? ` (worker ${workerArgs.join(' ')})` : ''}, ${rounds} rounds:`);
	row('time to first token', ttft);
	row('inter-token latency', itl);
	console.log(`  aggregate                ${(generated / (wall / 1000)).toFixed(1)} generated tokens/s ` +
		`(${generated} tokens in ${done} streams, ${(wall / 1000).toFixed(2)} s)`);
} finally {
	cleanup();
}
