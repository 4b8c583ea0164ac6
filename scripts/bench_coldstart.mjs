// Cold start of the pool: from a connection arriving with 0 workers to the
// first streamed token, through Caddy, on a model directory (the
// Qwen2-0.5B shape in `make bench`): with the weights already in emberd's
// memfd (emberd running, its workers stopped on idle), and without (emberd
// socket-activated by the connection, reading the weights from a cold page
// cache). A request to a ready worker is measured beside them. The first
// case is split with the worker's own log (its "ready" line and the
// request's ttft_ms): emberd's fork to the worker's start, the model's
// tables, the tokenizer beside the device (its initialisation, on a GPU the
// weights' upload and the graphs' capture), the rest of the start, the
// first token in the worker, and what is left (emberd noticing the
// connection, Caddy).
//   node scripts/bench_coldstart.mjs BUILD_DIR MODEL_DIR [RUNS] [-- WORKER_ARGS...]
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

const argv = process.argv.slice(2);
const dash = argv.indexOf('--');
const [build, modelDir, runsArg] = dash < 0 ? argv : argv.slice(0, dash);
const workerArgs = dash < 0 ? [] : argv.slice(dash + 1); // e.g. --device cuda
const runs = Number(runsArg || 3);
const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ember-coldstart-'));
const kids = [];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function start(cmd, args, env = {}, log = 'x.log') {
	const fd = fs.openSync(path.join(dir, log), 'a');
	const c = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', fd, fd] });
	kids.push(c);
	return c;
}

async function waitFor(fn, ms = 30000) {
	const until = Date.now() + ms;
	while (Date.now() < until) {
		if (await fn().catch(() => false)) return;
		await sleep(20);
	}
	throw new Error('timed out');
}

async function caddy(sock) {
	const port = await new Promise((res) => { const s = net.createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => res(p)); }); });
	start('caddy', ['run', '--config', path.join(root, 'units/Caddyfile'), '--adapter', 'caddyfile'], {
		EMBER_SITE: `http://127.0.0.1:${port}`, EMBER_UPSTREAM: `unix/${sock}`, CADDY_ADMIN: 'off', XDG_DATA_HOME: dir, XDG_CONFIG_HOME: dir,
	}, 'caddy.log');
	await waitFor(() => new Promise((res) => { const c = net.createConnection(port, '127.0.0.1', () => { c.end(); res(true); }); c.on('error', () => res(false)); }));
	return `http://127.0.0.1:${port}`;
}

// Seconds from sending the request to the first streamed text.
async function firstToken(base) {
	const t0 = performance.now();
	const r = await fetch(`${base}/v1/completions`, {
		method: 'POST', headers: { 'Content-Type': 'application/json' },
		body: JSON.stringify({ prompt: 'Once upon a time', max_tokens: 4, stream: true }),
	});
	let seen = '';
	let t = 0;
	for await (const part of r.body) {
		seen += Buffer.from(part).toString();
		if (!t && /"text":"[^"]/.test(seen)) t = performance.now();
	}
	if (!t) throw new Error(`no text: ${seen.slice(0, 200)}`);
	return (t - t0) / 1000;
}

// The worker's phases from the log lines after `from` (a byte offset).
const phaseNames = ['process start', 'model', 'tokenizer', 'init', 'weights to the GPU', 'graph capture', 'side by side', 'the rest'];
function phases(log, from) {
	const text = fs.readFileSync(log, 'utf8').slice(from);
	const ready = text.match(/"msg":"ready ([0-9.]+) s after [^:]*: ([^"]*)"/);
	const req = text.match(/"ttft_ms":([0-9.]+)/);
	if (!ready || !req) throw new Error(`no ready line or request line in ${log}`);
	const out = { ready: Number(ready[1]), ttft: Number(req[1]) / 1000 };
	for (const part of ready[2].split(', ')) {
		const m = part.match(/^(.*?) ([0-9.]+) s/);
		if (!m) continue;
		const name = phaseNames.find((n) => m[1] === n || m[1].endsWith(` ${n}`));
		if (name) out[name] = Number(m[2]);
	}
	return out;
}

const children = (pid) => spawnSync('pgrep', ['-P', String(pid)]).stdout.toString().split('\n').filter(Boolean);
const dropCaches = () => { try { fs.writeFileSync('/proc/sys/vm/drop_caches', '1'); return true; } catch { return false; } };
const median = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];

try {
	const emberd = path.join(build, 'emberd');
	const worker = path.join(build, 'ember-worker');
	// 1. weights in the memfd: emberd already up, no worker running.
	const sock = path.join(dir, 'warm.sock');
	const e = start(emberd, ['--model', modelDir, '--listen', sock, '--worker', worker, '--idle-timeout', '0.5', '--spare', '0', '--', ...workerArgs], {}, 'emberd.log');
	const elog = path.join(dir, 'emberd.log');
	await waitFor(async () => fs.readFileSync(path.join(dir, 'emberd.log'), 'utf8').includes('emberd: ready'));
	const base = await caddy(sock);
	const inMemfd = [];
	const split = [];
	const ready = [];
	for (let i = 0; i < runs; i++) {
		await waitFor(async () => children(e.pid).length === 0);
		const from = fs.statSync(elog).size;
		inMemfd.push(await firstToken(base));
		await sleep(50); // the request's log line follows its last byte
		split.push(phases(elog, from));
		ready.push(await firstToken(base)); // the worker is up now
	}
	e.kill('SIGTERM');
	// 2. nothing in memory: socket activation, cold page cache.
	const cold = [];
	let dropped = false;
	for (let i = 0; i < runs; i++) {
		const s2 = path.join(dir, `cold${i}.sock`);
		dropped = dropCaches();
		const a = start('systemd-socket-activate', ['-l', s2, emberd, '--model', modelDir, '--worker', worker, '--', ...workerArgs], {}, `cold${i}.log`);
		await waitFor(async () => fs.existsSync(s2));
		const b2 = await caddy(s2);
		cold.push(await firstToken(b2));
		a.kill('SIGTERM');
	}
	const f = (x) => `${(x * 1000).toFixed(0)} ms`;
	console.log(`cold start to the first streamed token, ${path.basename(modelDir)}, through Caddy, median of ${runs}:`);
	console.log(`  weights already in emberd's memfd, 0 workers:   ${f(median(inMemfd))}  (${inMemfd.map(f).join(', ')})`);
	console.log(`  emberd socket-activated, weights from ${dropped ? 'a cold page cache' : 'the page cache'}: ${f(median(cold))}  (${cold.map(f).join(', ')})`);
	console.log(`  a ready worker, for comparison:                 ${f(median(ready))}  (${ready.map(f).join(', ')})`);
	// The run of median total, split.
	const at = inMemfd.indexOf(median(inMemfd));
	const sp = split[at];
	console.log(`  that median run (weights in the memfd), split:`);
	const label = { init: '  device init', tokenizer: '  tokenizer', 'weights to the GPU': '  weights to the GPU',
		'graph capture': '  graph capture', 'side by side': 'tokenizer and device, side by side' };
	const order = ['process start', 'model', 'side by side', 'tokenizer', 'init', 'weights to the GPU', 'graph capture', 'the rest'];
	for (const n of order)
		if (sp[n] !== undefined && (n !== 'weights to the GPU' && n !== 'graph capture' || sp[n] > 0))
			console.log(`    ${(label[n] || n).padEnd(36)} ${f(sp[n])}`);
	console.log(`    ${'the first token, in the worker'.padEnd(36)} ${f(sp.ttft)}`);
	console.log(`    ${'the rest (emberd noticing, Caddy)'.padEnd(36)} ${f(inMemfd[at] - sp.ready - sp.ttft)}`);
} finally {
	for (const k of kids) k.kill('SIGTERM');
	await sleep(300);
	fs.rmSync(dir, { recursive: true, force: true });
}
