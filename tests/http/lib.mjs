// What ember's integration tests share: starting processes into a
// scratch directory, waiting, Caddy in front of a socket, curl, reading SSE
// streams, and the runner that prints "N passed, N failed, N skipped".
// A test file sets ctx.dir (its scratch directory) and ctx.model (the model
// name answers must carry) before starting anything.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const units = path.join(root, 'units');
export const ctx = { dir: null, model: 'tiny-qwen2', children: [] };
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function have(cmd) {
	return spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
}

export async function freePort() {
	return new Promise((resolve, reject) => {
		const s = net.createServer();
		s.listen(0, '127.0.0.1', () => {
			const p = s.address().port;
			s.close(() => resolve(p));
		});
		s.on('error', reject);
	});
}

// Starts cmd with its output in DIR/NAME.log; killed by cleanup().
export function start(name, cmd, argv, env = {}) {
	const log = fs.openSync(path.join(ctx.dir, `${name}.log`), 'a');
	const child = spawn(cmd, argv, { env: { ...process.env, ...env }, stdio: ['ignore', log, log], cwd: ctx.dir });
	child.name = name;
	child.exited = false;
	child.on('exit', () => { child.exited = true; });
	ctx.children.push(child);
	return child;
}

export async function waitFor(what, fn, ms = 15000) {
	const until = Date.now() + ms;
	let last;
	while (Date.now() < until) {
		try {
			if (await fn()) return;
		} catch (e) {
			last = e;
		}
		await sleep(50);
	}
	throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
}

// Caddy in front of sock (a unix socket path, or HOST:PORT); with ask,
// waits for /health through it, else only for its port (a request would
// start a worker of an idle pool).
export async function startCaddy(name, sock, ask = true) {
	const port = await freePort();
	start(name, 'caddy', ['run', '--config', path.join(units, 'Caddyfile'), '--adapter', 'caddyfile'], {
		EMBER_SITE: `http://127.0.0.1:${port}`, EMBER_UPSTREAM: sock.startsWith('/') ? `unix/${sock}` : sock, CADDY_ADMIN: 'off',
		XDG_DATA_HOME: ctx.dir, XDG_CONFIG_HOME: ctx.dir, HOME: ctx.dir,
	});
	const base = `http://127.0.0.1:${port}`;
	if (ask)
		await waitFor(`${name} on ${port}`, async () => (await fetch(`${base}/health`)).status === 200);
	else
		await waitFor(`${name} on ${port}`, () => new Promise((resolve) => {
			const c = net.createConnection(port, '127.0.0.1', () => { c.end(); resolve(true); });
			c.on('error', () => resolve(false));
		}));
	return base;
}

// curl, returning { status, headers, body } (and the raw stdout).
export function curl(url, { method = 'GET', body = null, headers = {}, raw = false } = {}) {
	const argv = ['-s', '-S', '-i', '--max-time', '60', '-X', method];
	for (const [k, v] of Object.entries(headers)) argv.push('-H', `${k}: ${v}`);
	if (body !== null) {
		const f = path.join(ctx.dir, `body-${process.pid}-${Math.random().toString(36).slice(2)}`);
		fs.writeFileSync(f, body);
		argv.push('--data-binary', `@${f}`, '-H', 'Content-Type: application/json');
	}
	argv.push(url);
	const r = spawnSync('curl', argv, { maxBuffer: 64 << 20 });
	if (r.status !== 0) throw new Error(`curl ${url} failed: ${r.stderr}`);
	const out = r.stdout.toString('utf8');
	// Skip interim "HTTP/1.1 100 Continue" blocks.
	let rest = out;
	let head;
	for (;;) {
		const i = rest.indexOf('\r\n\r\n');
		head = rest.slice(0, i);
		rest = rest.slice(i + 4);
		if (!/^HTTP\/\S+ 1\d\d/.test(head)) break;
	}
	const status = Number(head.split(' ')[1]);
	const hdrs = {};
	for (const line of head.split('\r\n').slice(1)) {
		const k = line.indexOf(':');
		hdrs[line.slice(0, k).toLowerCase()] = line.slice(k + 1).trim();
	}
	return { status, headers: hdrs, body: rest, json: () => JSON.parse(rest), raw: out };
}

// The text of an SSE stream's chunks, checking their shape on the way.
export function sseText(body, kind) {
	const events = body.split('\n\n').filter((e) => e.length);
	let text = '';
	let done = false;
	let finish = null;
	let usage = null;
	for (const e of events) {
		if (e.startsWith(':')) continue;
		if (!e.startsWith('data: ')) throw new Error(`not an SSE event: ${e.slice(0, 80)}`);
		const d = e.slice(6);
		if (d === '[DONE]') { done = true; continue; }
		const c = JSON.parse(d);
		if (c.error) throw new Error(`error event: ${d}`);
		if (kind === 'chat' && c.object !== 'chat.completion.chunk') throw new Error(`object ${c.object}`);
		if (kind === 'text' && c.object !== 'text_completion') throw new Error(`object ${c.object}`);
		if (!c.id || typeof c.created !== 'number' || c.model !== ctx.model) throw new Error(`chunk fields: ${d}`);
		if (c.usage) usage = c.usage;
		for (const ch of c.choices) {
			text += kind === 'chat' ? (ch.delta.content ?? '') : ch.text;
			if (ch.finish_reason) finish = ch.finish_reason;
		}
	}
	if (!done) throw new Error('no data: [DONE]');
	return { text, finish, usage };
}

// One streamed completion of maxTokens through base: { status, body }
// (status 0 when the connection failed).
export const streamOnce = (base, i, maxTokens) => fetch(`${base}/v1/completions`, {
	method: 'POST', headers: { 'Content-Type': 'application/json' },
	body: JSON.stringify({ model: ctx.model, prompt: `Request ${i}`, max_tokens: maxTokens, stream: true, seed: i }),
}).then(async (r) => ({ status: r.status, body: await r.text() })).catch((e) => ({ status: 0, body: String(e) }));

// Whether a streamed completion ran to its length.
export function streamedToLength(r) {
	try {
		return r.status === 200 && sseText(r.body, 'text').finish === 'length';
	} catch {
		return false;
	}
}

// n clients sending short completions back to back until stop() is called;
// stop() resolves to { served, failures } (failures: a line each).
export function loadClients(base, n) {
	let running = true;
	let served = 0;
	const failures = [];
	const clients = Array.from({ length: n }, async (_, k) => {
		for (let i = 0; running; i++) {
			const r = await fetch(`${base}/v1/completions`, {
				method: 'POST', headers: { 'Content-Type': 'application/json' },
				body: JSON.stringify({ model: ctx.model, prompt: `Client ${k} request ${i}`, max_tokens: 8, seed: i }),
			}).then(async (r) => ({ status: r.status, body: await r.text() })).catch((e) => ({ status: 0, body: String(e) }));
			let ok = false;
			try {
				ok = r.status === 200 && !!JSON.parse(r.body).choices[0].finish_reason;
			} catch {}
			if (ok) served++;
			else failures.push(`${r.status} ${r.body.slice(0, 120)}`);
		}
	});
	return {
		served: () => served,
		stop: async () => {
			running = false;
			await Promise.all(clients);
			return { served, failures };
		},
	};
}

// Starts n streamed completions of maxTokens and waits until each has sent
// text; returns { bodies } (a promise of their bodies).
export async function streamsInFlight(base, n, maxTokens, prefix = 'Stream') {
	let started = 0;
	const streams = Array.from({ length: n }, (_, i) => fetch(`${base}/v1/completions`, {
		method: 'POST', headers: { 'Content-Type': 'application/json' },
		body: JSON.stringify({ model: ctx.model, prompt: `${prefix} ${i}`, max_tokens: maxTokens, stream: true, seed: i }),
	}).then(async (r) => {
		let body = '';
		for await (const part of r.body) {
			if (!body.includes('"text"') && Buffer.from(part).toString().includes('"text"')) started++;
			body += Buffer.from(part).toString();
		}
		return body;
	}).catch((e) => String(e)));
	await waitFor(`${n} streams running`, () => started === n, 30000);
	return { bodies: Promise.all(streams) };
}

export function assert(cond, msg) {
	if (!cond) throw new Error(msg);
}

export function eq(a, b, what) {
	if (JSON.stringify(a) !== JSON.stringify(b)) throw new Error(`${what}: ${JSON.stringify(a)} != ${JSON.stringify(b)}`);
}

// Runs tests in order (only the one named, with only); a test throws
// { skip: why } to skip. Returns { passed, failed, skipped }.
export async function runTests(tests, only = null) {
	const n = { passed: 0, failed: 0, skipped: 0 };
	for (const t of tests) {
		if (only && t.name !== only) continue;
		try {
			await t.fn();
			console.log(`PASS ${t.name}`);
			n.passed++;
		} catch (e) {
			if (e && e.skip) {
				console.log(`SKIP ${t.name}: ${e.skip}`);
				n.skipped++;
				continue;
			}
			console.log(`FAIL ${t.name}: ${e.message}`);
			n.failed++;
		}
	}
	return n;
}

// Stops what start() started and removes the scratch directory (kept
// with EMBER_KEEP_TMP=1).
export function cleanup() {
	for (const c of ctx.children) if (!c.exited) c.kill('SIGTERM');
	if (ctx.dir && !process.env.EMBER_KEEP_TMP) {
		const d = ctx.dir;
		setTimeout(() => fs.rmSync(d, { recursive: true, force: true }), 0);
	}
}
