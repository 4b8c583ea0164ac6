// ember under a real systemd: a Debian 12 root (scripts/nsroot.sh) booted
// with systemd as PID 1 in a systemd-nspawn container, with emberd and
// ember-worker installed where units/ember.service expects them and the
// units of units/ enabled as an operator would. Caddy runs outside and
// reaches the socket through the container's root. Every request of the
// run is counted; none may fail.
//   node tests/http/systemd.mjs --build build --models build/models --nsroot build/nsroot [--only NAME]
// Prints PASS/FAIL per test and the closing line "N passed, N failed, N skipped".
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
	assert, cleanup, ctx, curl, eq, have, loadClients, runTests, sleep, start, startCaddy, streamOnce,
	streamedToLength, streamsInFlight, units, waitFor,
} from './lib.mjs';

const args = process.argv.slice(2);
const opt = (name, dflt) => {
	const i = args.indexOf(name);
	return i >= 0 ? args[i + 1] : dflt;
};
const build = path.resolve(opt('--build', 'build'));
const models = path.resolve(opt('--models', 'build/models'));
const nsroot = path.resolve(opt('--nsroot', 'build/nsroot'));
const only = opt('--only', null);
const model = ctx.model;
const secret = 'zanzibarquokka'; // a prompt word that must not reach the journal

let dir;       // scratch directory
let dropins;   // bound as /etc/systemd/system/ember.service.d
let nspawn;    // the systemd-nspawn process
let init;      // the container's PID 1, as this machine sees it
let sock;      // the socket, reached through the container's root
let base;      // Caddy in front of it
let served = 0;
const failures = [];

// Counts a request of the run; returns whether it succeeded.
function tally(ok, what) {
	if (ok) served++;
	else failures.push(what);
	return ok;
}

// A command inside the container: { status, out }.
function inside(...cmd) {
	const r = spawnSync('nsenter', ['-t', String(init), '-a', ...cmd], { timeout: 60000, maxBuffer: 256 << 20 });
	return { status: r.status, out: `${r.stdout}${r.stderr}`.trim() };
}
const systemctl = (...a) => inside('systemctl', ...a);
const isActive = (unit) => systemctl('is-active', unit).out;
const workers = () => spawnSync('pgrep', ['--ns', String(init), '--nslist', 'pid', '-x', 'ember-worker'])
	.stdout.toString().split('\n').filter(Boolean).length;
const journal = () => inside('journalctl', '-o', 'json', '-u', 'ember.service', '--no-pager').out
	.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
const messages = () => journal().map((e) => String(e.MESSAGE));

function dropin(name, text) {
	if (text === null) fs.rmSync(path.join(dropins, name), { force: true });
	else fs.writeFileSync(path.join(dropins, name), text);
	eq(systemctl('daemon-reload').status, 0, 'daemon-reload');
}

function complete(prompt = 'The rivers of Europe are') {
	const r = curl(`${base}/v1/completions`, {
		method: 'POST', body: JSON.stringify({ model, prompt, max_tokens: 16, seed: 3 }),
	});
	let ok = false;
	try {
		ok = r.status === 200 && r.json().choices[0].finish_reason === 'length';
	} catch {}
	tally(ok, `${r.status} ${r.body.slice(0, 120)}`);
	return r;
}

// --- the container ----------------------------------------------------------------

function mounted(p) {
	return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === p);
}

async function boot() {
	if (process.getuid() !== 0) throw new Error('needs root (systemd-nspawn)');
	for (const c of ['systemd-nspawn', 'nsenter', 'pgrep', 'caddy', 'curl'])
		if (!have(c)) throw new Error(`missing ${c} (make deps installs it)`);
	if (!fs.existsSync(path.join(nsroot, '.ember-nsroot')))
		throw new Error(`no container root in ${nsroot} (scripts/nsroot.sh makes it)`);
	// nspawn keeps its state here; a tmpfs, as this machine's /run may not be one.
	fs.mkdirSync('/run/systemd/nspawn', { recursive: true });
	if (!mounted('/run/systemd/nspawn'))
		eq(spawnSync('mount', ['-t', 'tmpfs', 'tmpfs', '/run/systemd/nspawn']).status, 0, 'mount /run/systemd/nspawn');
	dropins = path.join(dir, 'ember.service.d');
	fs.mkdirSync(dropins);
	// What an operator sets in a drop-in: the model, the pool's sizes, and
	// short idle times so that the test sees them pass.
	fs.writeFileSync(path.join(dropins, '10-test.conf'), `[Service]
Environment=EMBER_MODEL=/srv/ember/${model} EMBER_MAX_WORKERS=3 EMBER_SPARE=1 EMBER_SLOTS=2
Environment=EMBER_IDLE_TIMEOUT=2 EMBER_EXIT_IDLE=4
ExecStart=
ExecStart=/usr/local/bin/emberd -- --threads 1 --queue-timeout 300
`);
	const bind = (from, to) => `--bind-ro=${from}:${to}`;
	// Libraries found through the programs' run path (CUDA's, in a build
	// with it) are not in the container's root: bind them where the run
	// path looks.
	const runpath = new Set();
	for (const p of ['emberd', 'ember-worker']) {
		const d = spawnSync('readelf', ['-d', path.join(build, p)]).stdout.toString();
		for (const m of d.matchAll(/\((?:RUNPATH|RPATH)\)\s+Library r(?:un)?path: \[([^\]]*)\]/g))
			for (const dir of m[1].split(':')) if (dir && fs.existsSync(dir)) runpath.add(dir);
	}
	nspawn = start('nspawn', 'systemd-nspawn', [
		...[...runpath].map((d) => bind(fs.realpathSync(d), d)),
		'-D', nsroot, '--volatile=overlay', '--register=no', '--keep-unit', '--boot', '--console=passive',
		`--machine=ember-test-${process.pid}`,
		bind(path.join(build, 'emberd'), '/usr/local/bin/emberd'),
		bind(path.join(build, 'ember-worker'), '/usr/local/bin/ember-worker'),
		bind(path.join(units, 'ember.service'), '/etc/systemd/system/ember.service'),
		bind(path.join(units, 'ember.socket'), '/etc/systemd/system/ember.socket'),
		bind(dropins, '/etc/systemd/system/ember.service.d'),
		bind(path.join(models, model), `/srv/ember/${model}`),
	]);
	// The container's PID 1: the child of systemd-nspawn that is PID 1 in
	// its own PID namespace (nspawn also forks short-lived helpers).
	await waitFor('the container', () => {
		if (nspawn.exited) throw new Error(`systemd-nspawn exited with status ${nspawn.exitCode}`);
		const kids = spawnSync('pgrep', ['-P', String(nspawn.pid)]).stdout.toString().split('\n').filter(Boolean);
		for (const k of kids) {
			let st = '';
			try {
				st = fs.readFileSync(`/proc/${k}/status`, 'utf8');
			} catch {}
			if (/^NSpid:.*\s1$/m.test(st)) {
				init = Number(k);
				return true;
			}
		}
		return false;
	}, 30000);
	let state = '';
	try {
		await waitFor('systemd to finish booting', () => {
			if (nspawn.exited) throw new Error(`systemd-nspawn exited with status ${nspawn.exitCode}`);
			state = systemctl('is-system-running').out;
			return state === 'running' || state === 'degraded';
		}, 60000);
	} catch (e) {
		throw new Error(`${e.message} (PID 1 is ${init}, state ${state}); jobs:\n${systemctl('list-jobs', '--no-pager').out}`);
	}
	const en = systemctl('enable', '--now', 'ember.socket');
	eq(en.status, 0, `systemctl enable --now ember.socket: ${en.out}`);
	sock = `/proc/${init}/root/run/ember/ember.sock`;
	await waitFor('the socket', () => fs.existsSync(sock));
	base = await startCaddy('caddy', sock, false);
}

async function poweroff() {
	if (!nspawn || nspawn.exited) return;
	const gone = new Promise((resolve) => nspawn.on('exit', resolve));
	systemctl('poweroff');
	await Promise.race([gone, sleep(20000)]);
	if (!nspawn.exited) nspawn.kill('SIGKILL');
}

// --- the tests ----------------------------------------------------------------------

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

test('systemd_idle_at_start', async () => {
	eq(isActive('ember.socket'), 'active', 'ember.socket');
	eq(isActive('ember.service'), 'inactive', 'ember.service before any request');
	eq(workers(), 0, 'workers at start');
	const st = fs.statSync(sock);
	eq((st.mode & 0o777).toString(8), '660', 'socket mode');
});

test('systemd_first_request_activates', async () => {
	const r = complete(`A ${secret} walks into`);
	eq(r.status, 200, 'the first request');
	eq(isActive('ember.service'), 'active', 'ember.service after it');
	assert(workers() >= 1, 'no worker');
});

test('systemd_spare_started_when_full', async () => {
	// Two streams fill a worker's 2 slots: a second worker starts with room
	// (EMBER_SPARE=1) before anyone asks for it.
	const streams = await streamsInFlight(base, 2, 600, 'Spare');
	let done = false;
	streams.bodies.then(() => { done = true; });
	await waitFor('a spare worker', () => workers() === 2 || done, 20000);
	assert(!done, 'the streams ended before a spare started');
	const bodies = await streams.bodies;
	for (const b of bodies) eq(tally(streamedToLength({ status: 200, body: b }), `stream ${b.slice(-80)}`), true, 'a stream');
});

test('systemd_burst_grows_pool', async () => {
	let most = 0;
	let watching = true;
	const watch = (async () => {
		while (watching) {
			most = Math.max(most, workers());
			await sleep(50);
		}
	})();
	const results = await Promise.all(Array.from({ length: 32 }, (_, i) => streamOnce(base, i, 48)));
	watching = false;
	await watch;
	let bad = 0;
	for (const r of results) if (!tally(streamedToLength(r), `stream ${r.status} ${r.body.slice(0, 80)}`)) bad++;
	console.log(`    32 streams: ${most} workers at most, ${bad} failed`);
	eq(bad, 0, 'failed streams');
	eq(most, 3, 'workers at the busiest (EMBER_MAX_WORKERS)');
});

test('systemd_idle_to_zero_then_exit', async () => {
	const t0 = Date.now();
	await waitFor('the pool back to 0 workers', () => workers() === 0, 20000);
	const t1 = Date.now();
	eq(isActive('ember.service'), 'active', 'emberd while within EMBER_EXIT_IDLE');
	await waitFor('emberd to exit', () => isActive('ember.service') === 'inactive', 20000);
	const t2 = Date.now();
	console.log(`    0 workers after ${((t1 - t0) / 1000).toFixed(1)} s; emberd gone ${((t2 - t1) / 1000).toFixed(1)} s later`);
	eq(systemctl('show', '-p', 'Result', '--value', 'ember.service').out, 'success', 'ember.service result');
	eq(isActive('ember.socket'), 'active', 'ember.socket after emberd exited');
	assert(fs.existsSync(sock), 'the socket is gone');
	assert(messages().some((m) => /exiting \(systemd keeps the socket\)/.test(m)), 'no exit-idle line in the journal');
});

test('systemd_reactivates', async () => {
	const streams = await Promise.all(Array.from({ length: 4 }, (_, i) => streamOnce(base, 100 + i, 16)));
	for (const r of streams) eq(tally(streamedToLength(r), `stream ${r.status}`), true, 'a stream after exit-idle');
	eq(complete().status, 200, 'a request after exit-idle');
	eq(isActive('ember.service'), 'active', 'ember.service activated again');
});

test('systemd_journal_fields', async () => {
	const entries = journal();
	const req = entries.find((e) => e._COMM === 'ember-worker' && e.EMBER_ROUTE === 'completions' && e.EMBER_STREAM === '0');
	assert(req, 'no request entry of ember-worker in the journal');
	for (const f of ['EMBER_REQUEST_ID', 'EMBER_METHOD', 'EMBER_STATUS', 'EMBER_MODEL', 'EMBER_PROMPT_TOKENS',
		'EMBER_COMPLETION_TOKENS', 'EMBER_DURATION_MS', 'EMBER_TTFT_MS', 'EMBER_QUEUE_MS', 'EMBER_FINISH_REASON'])
		assert(f in req, `no ${f} in ${JSON.stringify(req)}`);
	eq([req.EMBER_STATUS, req.EMBER_MODEL, req.EMBER_FINISH_REASON, req._SYSTEMD_UNIT], ['200', model, 'length', 'ember.service'], 'fields');
	assert(/^[0-9a-f]{32}$/.test(req.EMBER_REQUEST_ID), `request id ${req.EMBER_REQUEST_ID}`);
	assert(Number(req.EMBER_PROMPT_TOKENS) > 0 && Number(req.EMBER_COMPLETION_TOKENS) === 16, 'token counts');
	// emberd logs on stderr with "<N>" priorities, which journald takes.
	const ready = entries.find((e) => e.SYSLOG_IDENTIFIER === 'emberd' && /ready: socket from systemd/.test(e.MESSAGE));
	assert(ready && ready.PRIORITY === '6', `emberd's ready line: ${JSON.stringify(ready)}`);
	assert(!/<\d>/.test(ready.MESSAGE), `the priority prefix was left in: ${ready.MESSAGE}`);
	const streamed = entries.filter((e) => e.EMBER_STREAM === '1').length;
	console.log(`    ${entries.length} journal entries, ${streamed} of streamed requests with EMBER_* fields`);
	assert(streamed >= 32, 'streamed requests missing from the journal');
	assert(!JSON.stringify(entries).includes(secret), 'prompt text reached the journal');
});

test('systemd_analyze_security', async () => {
	const r = inside('systemd-analyze', 'security', '--no-pager', 'ember.service');
	const m = /Overall exposure level for ember\.service: ([0-9.]+)/.exec(r.out);
	assert(m, `systemd-analyze security printed:\n${r.out.slice(-600)}`);
	console.log(`    systemd-analyze security ember.service: ${m[1]}`);
	assert(Number(m[1]) <= 2.5, `exposure ${m[1]} above 2.5`);
});

test('systemd_reload_under_load', async () => {
	const load = loadClients(base, 6);
	let r;
	try {
		await waitFor('some requests', () => load.served() > 5, 20000);
		r = systemctl('reload', 'ember.service');
		await waitFor('the reload', () => messages().some((m) => /SIGHUP: reloaded the model/.test(m)), 20000);
		await waitFor('an old worker replaced', () => messages().some((m) => /replaced after SIGHUP/.test(m)), 20000);
		await sleep(1500);
	} finally {
		await load.stop();
	}
	eq(r.status, 0, `systemctl reload: ${r.out}`);
	const { served: n, failures: f } = await load.stop();
	served += n;
	failures.push(...f);
	console.log(`    systemctl reload under 6 clients: ${n} requests served, ${f.length} failed`);
	eq(f, [], 'failed requests');
});

test('systemd_fd_store_survives_restart', async () => {
	eq(isActive('ember.service'), 'active', 'ember.service');
	eq(systemctl('show', '-p', 'NFileDescriptorStore', '--value', 'ember.service').out, '1', 'fds in the store');
	// The restarted emberd is given a model directory that does not exist:
	// it can only answer from the weights the fd store kept.
	dropin('20-no-model.conf', `[Service]
Environment=EMBER_MODEL=/srv/ember/gone
ExecStart=
ExecStart=/usr/local/bin/emberd -- --threads 1 --queue-timeout 300 --model-name ${model}
`);
	const r = systemctl('restart', 'ember.service');
	eq(r.status, 0, `systemctl restart: ${r.out}`);
	eq(isActive('ember.service'), 'active', 'ember.service after the restart');
	eq(complete().status, 200, 'a request answered from the fd store');
	const run = systemctl('show', '-p', 'InvocationID', '--value', 'ember.service').out;
	const since = journal().filter((e) => e._SYSTEMD_INVOCATION_ID === run).map((e) => String(e.MESSAGE));
	assert(since.some((m) => /took the weight store back from systemd's fd store: nothing read from disk/.test(m)),
		`no fd-store line after the restart:\n${since.join('\n')}`);
	assert(!since.some((m) => /into the weight store/.test(m)), 'the restart read the model from disk');
	console.log('    after systemctl restart, with EMBER_MODEL naming a missing directory: answered from the fd store');
	dropin('20-no-model.conf', null);
	eq(systemctl('restart', 'ember.service').status, 0, 'systemctl restart');
});

test('systemd_stop_drains', async () => {
	const streams = await streamsInFlight(base, 4, 120, 'Last');
	const r = systemctl('stop', 'ember.service');
	eq(r.status, 0, `systemctl stop: ${r.out}`);
	const bodies = await streams.bodies;
	for (const b of bodies) tally(streamedToLength({ status: 200, body: b }), `stream at stop: ${b.slice(-120)}`);
	eq(bodies.filter((b) => streamedToLength({ status: 200, body: b })).length, 4, 'streams in flight at stop that ran to their end');
	eq(isActive('ember.service'), 'inactive', 'ember.service after stop');
	eq(isActive('ember.socket'), 'active', 'ember.socket after stop');
});

test('systemd_no_request_lost', async () => {
	console.log(`    the whole run: ${served} requests served, ${failures.length} failed`);
	eq(failures, [], 'failed requests');
	assert(served > 40, `only ${served} requests`);
});

// --- main -----------------------------------------------------------------------------

async function main() {
	dir = ctx.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ember-systemd-'));
	fs.chmodSync(dir, 0o755);
	try {
		await boot();
	} catch (e) {
		console.log(`FAIL setup: ${e.message}`);
		for (const f of fs.readdirSync(dir).filter((f) => f.endsWith('.log')))
			console.log(`--- ${f}\n${fs.readFileSync(path.join(dir, f), 'utf8').slice(-2000)}`);
		await poweroff();
		cleanup();
		console.log('0 passed, 1 failed, 0 skipped');
		process.exit(1);
	}
	let n = { passed: 0, failed: 1, skipped: 0 };
	try {
		n = await runTests(tests, only);
		if (n.failed) console.log(`--- journal of ember.service\n${messages().slice(-40).join('\n')}`);
	} finally {
		await poweroff();
	}
	const { passed, failed, skipped } = n;
	cleanup();
	console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
	process.exit(failed ? 1 : 0);
}

process.on('SIGINT', async () => { await poweroff(); cleanup(); process.exit(130); });
main();
