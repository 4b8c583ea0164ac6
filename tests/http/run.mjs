// ember's integration tests: ember-worker behind real Caddy, Apache httpd and
// nginx on loopback ports, with the front-end files of units/ as they are,
// called with curl, with the official openai client and with the Vercel AI SDK; plus the worker as
// plain CGI and on a socket inherited from spawn-fcgi.
//   node tests/http/run.mjs --worker build/ember-worker --models build/models [--only NAME]
// Prints PASS/FAIL per test and the closing line "N passed, N failed, N skipped".
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { generateText, jsonSchema, streamText, tool } from 'ai';
import {
	assert, cleanup, ctx, curl, eq, freePort, have, runTests, sleep, sseText, start, startCaddy,
	loadClients, streamOnce, streamedToLength, streamsInFlight, units, waitFor,
} from './lib.mjs';

const args = process.argv.slice(2);
const opt = (name, dflt) => {
	const i = args.indexOf(name);
	return i >= 0 ? args[i + 1] : dflt;
};
const worker = path.resolve(opt('--worker', 'build/ember-worker'));
const models = path.resolve(opt('--models', 'build/models'));
const only = opt('--only', null);
const model = ctx.model;
let dir;

async function startWorker(name, extra = []) {
	const sock = path.join(dir, `${name}.sock`);
	const w = start(name, worker, ['--model', path.join(models, model), '--listen', sock,
		'--listen-mode', '0666', '--threads', '1', ...extra]);
	await waitFor(`${name} to listen`, () => fs.existsSync(sock) && !w.exited);
	w.sock = sock;
	return w;
}

async function startApache(sock) {
	const port = await freePort();
	const mods = '/usr/lib/apache2/modules';
	const user = process.getuid() === 0 ? 'User www-data\nGroup www-data\n' : '';
	const conf = `ServerRoot "${dir}"
ServerName 127.0.0.1
Listen 127.0.0.1:${port}
PidFile "${dir}/apache.pid"
DefaultRuntimeDir "${dir}"
ErrorLog "${dir}/apache-error.log"
LogLevel warn
${user}LoadModule mpm_event_module ${mods}/mod_mpm_event.so
LoadModule authz_core_module ${mods}/mod_authz_core.so
LoadModule proxy_module ${mods}/mod_proxy.so
LoadModule proxy_fcgi_module ${mods}/mod_proxy_fcgi.so
Define EMBER_SOCKET ${sock}
Include "${units}/apache-ember.conf"
`;
	fs.writeFileSync(path.join(dir, 'httpd.conf'), conf);
	start('apache', '/usr/sbin/apache2', ['-f', path.join(dir, 'httpd.conf'), '-DFOREGROUND']);
	const base = `http://127.0.0.1:${port}`;
	await waitFor(`apache on ${port}`, async () => (await fetch(`${base}/health`)).status === 200);
	return base;
}

async function startNginx(sock) {
	const port = await freePort();
	fs.copyFileSync('/etc/nginx/fastcgi_params', path.join(dir, 'fastcgi_params'));
	const user = process.getuid() === 0 ? 'user www-data;\n' : '';
	const conf = `${user}pid ${dir}/nginx.pid;
error_log ${dir}/nginx-error.log warn;
daemon off;
events {}
http {
	access_log off;
	client_body_temp_path ${dir}/nginx-body;
	fastcgi_temp_path ${dir}/nginx-fastcgi;
	proxy_temp_path ${dir}/nginx-proxy;
	scgi_temp_path ${dir}/nginx-scgi;
	uwsgi_temp_path ${dir}/nginx-uwsgi;
	upstream ember { server unix:${sock}; }
	server {
		listen 127.0.0.1:${port};
		include ${units}/nginx-ember.conf;
	}
}
`;
	fs.writeFileSync(path.join(dir, 'nginx.conf'), conf);
	start('nginx', '/usr/sbin/nginx', ['-p', dir, '-c', path.join(dir, 'nginx.conf')]);
	const base = `http://127.0.0.1:${port}`;
	await waitFor(`nginx on ${port}`, async () => (await fetch(`${base}/health`)).status === 200);
	return base;
}

// --- clients ---------------------------------------------------------------

const chatBody = (extra = {}) => JSON.stringify({
	model, messages: [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'Name three rivers.' }],
	max_tokens: 24, seed: 7, temperature: 0.8, ...extra,
});
const textBody = (extra = {}) => JSON.stringify({ model, prompt: 'The rivers of Europe are', max_tokens: 24, seed: 11, temperature: 0.9, ...extra });

// --- the tests ---------------------------------------------------------------

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

const fronts = {}; // name -> base URL
const long = 'x'.repeat(1100000); // over the default --max-body-bytes

function frontTests(front) {
	test(`${front}_curl_chat`, async () => {
		const base = fronts[front];
		const r = curl(`${base}/v1/chat/completions`, { method: 'POST', body: chatBody() });
		eq(r.status, 200, 'status');
		assert(/application\/json/.test(r.headers['content-type']), 'content-type');
		const j = r.json();
		eq(j.object, 'chat.completion', 'object');
		assert(j.id.startsWith('chatcmpl-'), 'id');
		eq(j.model, model, 'model');
		eq(j.choices[0].message.role, 'assistant', 'role');
		assert(['stop', 'length'].includes(j.choices[0].finish_reason), 'finish_reason');
		eq(j.usage.total_tokens, j.usage.prompt_tokens + j.usage.completion_tokens, 'usage');
		const s = curl(`${base}/v1/chat/completions`, { method: 'POST', body: chatBody({ stream: true, stream_options: { include_usage: true } }) });
		eq(s.status, 200, 'stream status');
		assert(/text\/event-stream/.test(s.headers['content-type']), 'stream content-type');
		eq(s.headers['cache-control'], 'no-cache', 'Cache-Control');
		const st = sseText(s.body, 'chat');
		eq(st.text, j.choices[0].message.content, 'streamed text vs whole text');
		eq(st.finish, j.choices[0].finish_reason, 'finish_reason');
		eq(st.usage, j.usage, 'usage');
	});
	test(`${front}_curl_completion`, async () => {
		const base = fronts[front];
		const r = curl(`${base}/v1/completions`, { method: 'POST', body: textBody() });
		eq(r.status, 200, 'status');
		const j = r.json();
		eq(j.object, 'text_completion', 'object');
		const s = curl(`${base}/v1/completions`, { method: 'POST', body: textBody({ stream: true }) });
		const st = sseText(s.body, 'text');
		eq(st.text, j.choices[0].text, 'streamed text vs whole text');
		assert(j.choices[0].text.length > 0, 'some text');
	});
	test(`${front}_openai_client`, async () => {
		const client = new OpenAI({ baseURL: `${fronts[front]}/v1`, apiKey: 'unused', maxRetries: 0 });
		const msgs = [{ role: 'user', content: 'Write a haiku about the sea.' }];
		const whole = await client.chat.completions.create({ model, messages: msgs, max_tokens: 20, seed: 3, temperature: 1 });
		let text = '';
		const stream = await client.chat.completions.create({ model, messages: msgs, max_tokens: 20, seed: 3, temperature: 1, stream: true });
		for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
		eq(text, whole.choices[0].message.content, 'chat: streamed vs whole');
		const wt = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 20, seed: 5 });
		let tt = '';
		const ts = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 20, seed: 5, stream: true });
		for await (const chunk of ts) tt += chunk.choices[0]?.text ?? '';
		eq(tt, wt.choices[0].text, 'completion: streamed vs whole');
		const list = await client.models.list();
		eq(list.data.map((m) => m.id), [model], 'models');
		let status = 0;
		try {
			await client.chat.completions.create({ model: 'no-such-model', messages: msgs });
		} catch (e) {
			status = e.status;
		}
		eq(status, 404, 'unknown model through the client');
	});
	test(`${front}_streams_as_it_goes`, async () => {
		// 200 tokens: the first must arrive before half of the time is gone.
		const t0 = performance.now();
		const res = await fetch(`${fronts[front]}/v1/completions`, {
			method: 'POST', headers: { 'Content-Type': 'application/json' },
			body: JSON.stringify({ model, prompt: 'Count:', max_tokens: 200, temperature: 1, seed: 1, stream: true }),
		});
		let first = 0;
		let all = '';
		let reads = 0;
		const dec = new TextDecoder();
		for await (const part of res.body) {
			reads++;
			all += dec.decode(part, { stream: true });
			if (!first && /"text":"[^"]/.test(all)) first = performance.now();
		}
		const end = performance.now();
		const st = sseText(all, 'text');
		assert(st.finish === 'length', `finish ${st.finish}`);
		assert(first > 0, 'no text chunk');
		const share = (first - t0) / (end - t0);
		console.log(`    ${front}: first token after ${(first - t0).toFixed(1)} ms of ${(end - t0).toFixed(1)} ms (${(share * 100).toFixed(1)}%), ${reads} reads`);
		assert(share < 0.5, `first token at ${(share * 100).toFixed(1)}% of the generation`);
		// Held back by a buffer on the way, 200 chunks would come in a few reads.
		assert(reads >= 30, `the stream came in ${reads} reads`);
	});
}

for (const f of ['caddy', 'apache', 'nginx']) frontTests(f);

// A model directory of the tiny model with template NAME (build/templates).
function templatedModel(name, template) {
	const mdir = path.join(dir, name);
	fs.mkdirSync(mdir);
	const src = path.join(models, model);
	for (const f of fs.readdirSync(src))
		if (f !== 'tokenizer_config.json') fs.symlinkSync(path.join(src, f), path.join(mdir, f));
	const cfgFile = path.join(src, 'tokenizer_config.json');
	const cfg = fs.existsSync(cfgFile) ? JSON.parse(fs.readFileSync(cfgFile, 'utf8')) : {};
	cfg.chat_template = fs.readFileSync(path.resolve(models, '..', 'templates', `${template}.jinja`), 'utf8');
	fs.writeFileSync(path.join(mdir, 'tokenizer_config.json'), JSON.stringify(cfg));
	return mdir;
}

async function templatedWorker(name, mdir, extra) {
	const sock = path.join(dir, `${name}.sock`);
	const w = start(name, worker, ['--model', mdir, '--model-name', name, '--listen', sock, '--listen-mode', '0666',
		'--threads', '1', ...extra]);
	await waitFor(`${name} to listen`, () => fs.existsSync(sock) && !w.exited);
	return startCaddy(`caddy-${name}`, sock);
}

// R1's chat template on the tiny model, whose output is forced (the
// engine's test seam, --forced-output) to what a reasoning model writes:
// the openai client and the Vercel AI SDK through Caddy read the reasoning
// apart, whole and streamed, and its tokens in the usage.
test('reasoning_clients', async () => {
	const think = 'Two and two make four; é is fine.\n', answer = '\n\nThe answer is 4.';
	const base = await templatedWorker('r1', templatedModel('r1-model', 'deepseek-r1'),
		['--forced-output', `${think}</think>${answer}`]);
	const messages = [{ role: 'user', content: 'What is 2 + 2?' }];

	const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0 });
	const whole = await client.chat.completions.create({ model: 'r1', messages, max_tokens: 64 });
	const m = whole.choices[0].message;
	eq(m.reasoning_content, think, 'openai: reasoning_content');
	eq(m.content, answer, 'openai: content');
	eq(whole.choices[0].finish_reason, 'stop', 'openai: finish_reason');
	const rt = whole.usage.completion_tokens_details.reasoning_tokens;
	assert(rt > 0 && rt < whole.usage.completion_tokens, `reasoning tokens ${rt} of ${whole.usage.completion_tokens}`);
	let sr = '', sc = '', usage = null;
	const stream = await client.chat.completions.create({ model: 'r1', messages, max_tokens: 64, stream: true, stream_options: { include_usage: true } });
	for await (const chunk of stream) {
		sr += chunk.choices[0]?.delta?.reasoning_content ?? '';
		sc += chunk.choices[0]?.delta?.content ?? '';
		if (chunk.usage) usage = chunk.usage;
	}
	eq(sr, think, 'openai stream: reasoning_content');
	eq(sc, answer, 'openai stream: content');
	eq(usage, whole.usage, 'openai stream: usage');
	// max_tokens inside the reasoning: all of it reasoning, finish_reason length
	const cut = await client.chat.completions.create({ model: 'r1', messages, max_tokens: 3 });
	eq(cut.choices[0].finish_reason, 'length', 'cut: finish_reason');
	eq(cut.choices[0].message.content, '', 'cut: no content');
	assert(think.startsWith(cut.choices[0].message.reasoning_content) && cut.choices[0].message.reasoning_content.length > 0, 'cut: reasoning so far');
	eq(cut.usage.completion_tokens_details.reasoning_tokens, 3, 'cut: every token reasoning');
	// a stop string inside the reasoning ends it there
	const stopped = await client.chat.completions.create({ model: 'r1', messages, max_tokens: 64, stop: ['four'] });
	eq(stopped.choices[0].finish_reason, 'stop', 'stop: finish_reason');
	eq(stopped.choices[0].message.reasoning_content, 'Two and two make ', 'stop: reasoning');
	// separate_reasoning: false leaves the raw text in content
	const raw = await client.chat.completions.create({ model: 'r1', messages, max_tokens: 64, separate_reasoning: false });
	eq(raw.choices[0].message.content, `${think}</think>${answer}`, 'raw content');
	eq(raw.choices[0].message.reasoning_content, undefined, 'raw: no reasoning_content');

	const ember = createOpenAICompatible({ name: 'ember', baseURL: `${base}/v1`, includeUsage: true });
	const g = await generateText({ model: ember('r1'), prompt: 'What is 2 + 2?', maxOutputTokens: 64 });
	eq(g.reasoningText, think, 'ai sdk: reasoningText');
	eq(g.text, answer, 'ai sdk: text');
	eq(g.usage.outputTokenDetails?.reasoningTokens ?? g.usage.reasoningTokens, rt, 'ai sdk: reasoning tokens');
	const st = streamText({ model: ember('r1'), prompt: 'What is 2 + 2?', maxOutputTokens: 64 });
	let ar = '', at = '';
	for await (const part of st.fullStream) {
		if (part.type === 'reasoning-delta') ar += part.text;
		if (part.type === 'text-delta') at += part.text;
		if (part.type === 'error') throw part.error;
	}
	eq(ar, think, 'ai sdk stream: reasoning');
	eq(at, answer, 'ai sdk stream: text');
	eq(await st.reasoningText, think, 'ai sdk stream: reasoningText');
});

// Tool calls in Qwen2.5's syntax and in R1's (after its reasoning), the
// models' output forced (--forced-output): the openai client and the AI
// SDK get tool_calls, whole and streamed, with finish_reason tool_calls; a
// call that does not end well formed comes back as text; and the tiny
// model's own output, with tools offered, is an answer like any other.
test('tool_calls_clients', async () => {
	const tools = [{ type: 'function', function: { name: 'get_weather', description: 'The weather in a city',
		parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } }];
	const messages = [{ role: 'user', content: 'Weather in Paris?' }];
	const qwen = templatedModel('qwen25-model', 'qwen2.5');
	const pre = 'Let me check.\n';
	const qcall = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>';
	const qbase = await templatedWorker('qwen25', qwen, ['--forced-output', pre + qcall]);
	const r1 = templatedModel('r1-tools-model', 'deepseek-r1');
	const think = 'The user wants the weather.\n';
	const dcall = '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{"city": "Paris"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>';
	const rbase = await templatedWorker('r1tools', r1, ['--forced-output', `${think}</think>\n\n${dcall}`]);
	for (const [base, id, content, reasoning] of [[qbase, 'qwen25', pre, undefined], [rbase, 'r1tools', '\n\n', think]]) {
		const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0 });
		const whole = await client.chat.completions.create({ model: id, messages, tools, max_tokens: 200 });
		const ch = whole.choices[0];
		eq(ch.finish_reason, 'tool_calls', `${id}: finish_reason`);
		eq(ch.message.content, content, `${id}: content`);
		eq(ch.message.reasoning_content, reasoning, `${id}: reasoning`);
		eq(ch.message.tool_calls.length, 1, `${id}: one call`);
		const tc = ch.message.tool_calls[0];
		assert(/^call_[A-Za-z0-9]{24}$/.test(tc.id), `${id}: call id ${tc.id}`);
		eq([tc.type, tc.function.name, JSON.parse(tc.function.arguments)], ['function', 'get_weather', { city: 'Paris' }], `${id}: the call`);
		const calls = [];
		let text = '', finish = null;
		const stream = await client.chat.completions.create({ model: id, messages, tools, max_tokens: 200, stream: true });
		for await (const chunk of stream) {
			const d = chunk.choices[0]?.delta ?? {};
			text += d.content ?? '';
			for (const t of d.tool_calls ?? []) {
				calls[t.index] ??= { id: '', name: '', arguments: '' };
				if (t.id) calls[t.index].id = t.id;
				if (t.function?.name) calls[t.index].name += t.function.name;
				calls[t.index].arguments += t.function?.arguments ?? '';
			}
			finish = chunk.choices[0]?.finish_reason ?? finish;
		}
		eq(text, content, `${id} stream: content`);
		eq(finish, 'tool_calls', `${id} stream: finish_reason`);
		eq(calls.map((c) => [c.name, JSON.parse(c.arguments)]), [['get_weather', { city: 'Paris' }]], `${id} stream: calls`);
		// the next turn: the call and its result go back through the template
		const next = await client.chat.completions.create({ model: id, max_tokens: 200, tools, messages: [...messages,
			{ role: 'assistant', content: null, tool_calls: [tc] }, { role: 'tool', tool_call_id: tc.id, content: '18 degrees' }] });
		eq(next.choices[0].finish_reason, 'tool_calls', `${id}: a second turn`);
		// tool_choice none: no call parsed, the text as it came
		const none = await client.chat.completions.create({ model: id, messages, tools, tool_choice: 'none', max_tokens: 200 });
		eq(none.choices[0].finish_reason, 'stop', `${id} tool_choice none`);
		assert(none.choices[0].message.content.includes(id === 'qwen25' ? '<tool_call>' : '<｜tool▁calls▁begin｜>'), `${id} none: the raw call in content`);

		const ember = createOpenAICompatible({ name: 'ember', baseURL: `${base}/v1` });
		const aiTools = { get_weather: tool({ description: 'The weather in a city', inputSchema: jsonSchema(tools[0].function.parameters) }) };
		const g = await generateText({ model: ember(id), prompt: 'Weather in Paris?', tools: aiTools, maxOutputTokens: 200 });
		eq(g.finishReason, 'tool-calls', `${id} ai sdk: finishReason`);
		eq(g.toolCalls.map((c) => [c.toolName, c.input]), [['get_weather', { city: 'Paris' }]], `${id} ai sdk: toolCalls`);
		const st = streamText({ model: ember(id), prompt: 'Weather in Paris?', tools: aiTools, maxOutputTokens: 200 });
		const parts = [];
		for await (const part of st.fullStream) {
			if (part.type === 'tool-call') parts.push([part.toolName, part.input]);
			if (part.type === 'error') throw part.error;
		}
		eq(parts, [['get_weather', { city: 'Paris' }]], `${id} ai sdk stream: tool-call`);
	}
	// tool_choice required or named: the prompt ends with the call's start
	// (so the forced output is only the rest), the call comes back whole,
	// also when the model leaves out the end marker.
	for (const [name, template, rest, choice] of [
		['qwen25named', 'qwen2.5', '{"city": "Oslo"}}', { type: 'function', function: { name: 'get_weather' } }],
		['qwen25req', 'qwen2.5', '{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>', 'required'],
		['r1named', 'deepseek-r1', '{"city": "Oslo"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>', { type: 'function', function: { name: 'get_weather' } }],
		['v31named', 'deepseek-v3.1', '{"city": "Oslo"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>', { type: 'function', function: { name: 'get_weather' } }]]) {
		const base = await templatedWorker(name, templatedModel(`${name}-model`, template), ['--forced-output', rest]);
		const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0 });
		for (const stream of [false, true]) {
			const body = { model: name, messages, tools, tool_choice: choice, max_tokens: 100 };
			let calls, finish, content = '';
			if (stream) {
				calls = [];
				for await (const chunk of await client.chat.completions.create({ ...body, stream: true })) {
					for (const t of chunk.choices[0]?.delta?.tool_calls ?? []) {
						calls[t.index] ??= { name: '', arguments: '' };
						calls[t.index].name += t.function?.name ?? '';
						calls[t.index].arguments += t.function?.arguments ?? '';
					}
					content += chunk.choices[0]?.delta?.content ?? '';
					finish = chunk.choices[0]?.finish_reason ?? finish;
				}
			} else {
				const r = await client.chat.completions.create(body);
				calls = (r.choices[0].message.tool_calls ?? []).map((t) => t.function);
				finish = r.choices[0].finish_reason;
				content = r.choices[0].message.content ?? '';
			}
			eq([finish, calls.map((f) => [f.name, JSON.parse(f.arguments)])], ['tool_calls', [['get_weather', { city: 'Oslo' }]]], `${name}${stream ? ' stream' : ''}`);
			assert(!content.includes('tool'), `${name}: content ${JSON.stringify(content)}`);
		}
	}
	let status = 0;
	try {
		await new OpenAI({ baseURL: `${qbase}/v1`, apiKey: 'unused', maxRetries: 0 }).chat.completions.create({ model: 'qwen25', messages, tools,
			tool_choice: { type: 'function', function: { name: 'no_such_tool' } } });
	} catch (e) {
		status = e.status;
	}
	eq(status, 400, 'a named tool_choice not among the tools');
	// A call begun and not finished: text, and a warning in the log.
	const cut = templatedModel('qwen25-cut-model', 'qwen2.5');
	const cbase = await templatedWorker('qwen25cut', cut, ['--forced-output', '<tool_call>\n{"name": "get_weather", "argu']);
	const cc = curl(`${cbase}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ messages, tools }) });
	eq(cc.status, 200, 'cut call: status');
	const cj = cc.json();
	eq([cj.choices[0].finish_reason, cj.choices[0].message.content, cj.choices[0].message.tool_calls],
		['stop', '<tool_call>\n{"name": "get_weather", "argu', undefined], 'cut call: text');
	await waitFor('the warning', () => fs.readFileSync(path.join(dir, 'qwen25cut.log'), 'utf8').includes('did not end well formed'));
	// The tiny model's own output with tools offered.
	const own = await templatedWorker('qwen25own', templatedModel('qwen25-own-model', 'qwen2.5'), []);
	const oj = curl(`${own}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ messages, tools, max_tokens: 16, seed: 1 }) }).json();
	assert(['stop', 'length'].includes(oj.choices[0].finish_reason) && typeof oj.choices[0].message.content === 'string', `own output: ${JSON.stringify(oj.choices[0])}`);
	// A template with no tool syntax refuses tools.
	const bad = curl(`${fronts.caddy}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ messages, tools }) });
	eq(bad.status, 400, 'tools on a template without a tool syntax');
});

test('keepalive_during_prefill', async () => {
	// A prompt of about 3,000 tokens takes several steps to prefill; the
	// worker runs with --keepalive 0.1, so comments come before the text.
	const prompt = Array.from({ length: 800 }, (_, i) => `word${i}`).join(' ');
	const r = curl(`${fronts.caddy}/v1/completions`, { method: 'POST', body: JSON.stringify({ model, prompt, max_tokens: 2, stream: true }) });
	const i = r.body.indexOf(': keep-alive');
	const d = r.body.indexOf('data: ');
	assert(i >= 0 && i < d, `no keep-alive before the first chunk: ${r.body.slice(0, 200)}`);
	sseText(r.body, 'text');
});

test('chunked_request_body', async () => {
	// A body of unknown length (Transfer-Encoding: chunked) reaches the
	// worker without CONTENT_LENGTH (Caddy: -1) and is read to its end.
	const r = curl(`${fronts.caddy}/v1/completions`, { method: 'POST', body: textBody(), headers: { 'Transfer-Encoding': 'chunked' } });
	eq(r.status, 200, `status (${r.body.slice(0, 200)})`);
	const big = curl(`${fronts.caddy}/v1/completions`, { method: 'POST', body: JSON.stringify({ prompt: long }), headers: { 'Transfer-Encoding': 'chunked' } });
	eq(big.status, 413, 'a chunked body over the limit');
});

test('logprobs', async () => {
	const r = curl(`${fronts.caddy}/v1/chat/completions`, { method: 'POST', body: chatBody({ logprobs: true, top_logprobs: 3, max_tokens: 5 }) });
	const j = r.json();
	const c = j.choices[0].logprobs.content;
	eq(c.length, j.usage.completion_tokens, 'one entry per token');
	for (const e of c) {
		assert(e.logprob <= 0 && e.top_logprobs.length === 3, 'entry');
		assert(e.top_logprobs[0].logprob >= e.top_logprobs[2].logprob, 'ordered');
		eq(Buffer.from(e.bytes).toString('utf8').length > 0, true, 'bytes');
	}
	const t = curl(`${fronts.caddy}/v1/completions`, { method: 'POST', body: textBody({ logprobs: 2, max_tokens: 5 }) }).json();
	eq(t.choices[0].logprobs.tokens.length, 5, 'tokens');
	eq(t.choices[0].logprobs.text_offset[0], 0, 'offset');
});

test('stop_strings', async () => {
	const whole = curl(`${fronts.caddy}/v1/completions`, { method: 'POST', body: textBody({ max_tokens: 30 }) }).json();
	const text = whole.choices[0].text;
	const cut = text.slice(4, 7);
	assert(cut.length === 3, 'the text is long enough');
	const r = curl(`${fronts.caddy}/v1/completions`, { method: 'POST', body: textBody({ max_tokens: 30, stop: [cut, 'zzzz'] }) }).json();
	eq(r.choices[0].text, text.slice(0, text.indexOf(cut)), 'text before the stop string');
	eq(r.choices[0].finish_reason, 'stop', 'finish_reason');
});

test('request_id', async () => {
	const r = curl(`${fronts.caddy}/v1/models`, { headers: { 'X-Request-Id': 'trace-42.a_b:c' } });
	eq(r.headers['x-request-id'], 'trace-42.a_b:c', 'echoed');
	const g = curl(`${fronts.caddy}/v1/models`);
	assert(/^[0-9a-f]{32}$/.test(g.headers['x-request-id']), `generated: ${g.headers['x-request-id']}`);
	const bad = curl(`${fronts.caddy}/v1/models`, { headers: { 'X-Request-Id': 'has spaces and "quotes"' } });
	assert(/^[0-9a-f]{32}$/.test(bad.headers['x-request-id']), 'an unusable id is replaced');
	await waitFor('the log line', () => fs.readFileSync(path.join(dir, 'main.log'), 'utf8').includes('"request_id":"trace-42.a_b:c"'), 3000);
});

// Forty-odd bad requests through Caddy: status and error type of each.
const bad = [
	// [name, method, path, body, status, type, code]
	['malformed JSON', 'POST', '/v1/chat/completions', '{"messages": [', 400, 'invalid_request_error', 'invalid_json'],
	['not an object', 'POST', '/v1/chat/completions', '[1,2]', 400, 'invalid_request_error', 'invalid_type'],
	['empty body', 'POST', '/v1/chat/completions', '', 400, 'invalid_request_error', 'invalid_json'],
	['trailing garbage', 'POST', '/v1/completions', '{"prompt":"a"} x', 400, 'invalid_request_error', 'invalid_json'],
	['duplicate key', 'POST', '/v1/completions', '{"prompt":"a","prompt":"b"}', 400, 'invalid_request_error', 'invalid_value'],
	['an integer beyond 64 bits', 'POST', '/v1/completions', '{"prompt":"a","seed":123456789012345678901234567890}', 400, 'invalid_request_error', 'invalid_value'],
	['invalid UTF-8', 'POST', '/v1/completions', Buffer.from([0x7b, 0x22, 0x70, 0x72, 0x6f, 0x6d, 0x70, 0x74, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0x22, 0x7d]), 400, 'invalid_request_error', 'invalid_utf8'],
	['missing messages', 'POST', '/v1/chat/completions', '{"model":"tiny-qwen2"}', 400, 'invalid_request_error', 'missing_required_parameter'],
	['empty messages', 'POST', '/v1/chat/completions', '{"messages":[]}', 400, 'invalid_request_error', 'invalid_value'],
	['messages not an array', 'POST', '/v1/chat/completions', '{"messages":"hi"}', 400, 'invalid_request_error', 'invalid_type'],
	['message not an object', 'POST', '/v1/chat/completions', '{"messages":["hi"]}', 400, 'invalid_request_error', 'invalid_type'],
	['unknown role', 'POST', '/v1/chat/completions', '{"messages":[{"role":"wizard","content":"hi"}]}', 400, 'invalid_request_error', 'invalid_value'],
	['role not a string', 'POST', '/v1/chat/completions', '{"messages":[{"role":1,"content":"hi"}]}', 400, 'invalid_request_error', 'invalid_type'],
	['content a number', 'POST', '/v1/chat/completions', '{"messages":[{"role":"user","content":5}]}', 400, 'invalid_request_error', 'invalid_type'],
	['image content part', 'POST', '/v1/chat/completions', '{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}', 400, 'invalid_request_error', 'unsupported_parameter'],
	['unknown model', 'POST', '/v1/chat/completions', '{"model":"gpt-9","messages":[{"role":"user","content":"hi"}]}', 404, 'invalid_request_error', 'model_not_found'],
	['model not a string', 'POST', '/v1/chat/completions', '{"model":7,"messages":[{"role":"user","content":"hi"}]}', 400, 'invalid_request_error', 'invalid_type'],
	['missing prompt', 'POST', '/v1/completions', '{"max_tokens":3}', 400, 'invalid_request_error', 'missing_required_parameter'],
	['empty prompt', 'POST', '/v1/completions', '{"prompt":""}', 400, 'invalid_request_error', 'invalid_value'],
	['prompt an object', 'POST', '/v1/completions', '{"prompt":{"a":1}}', 400, 'invalid_request_error', 'invalid_type'],
	['two prompts', 'POST', '/v1/completions', '{"prompt":["a","b"]}', 400, 'invalid_request_error', 'unsupported_parameter'],
	['token id out of vocabulary', 'POST', '/v1/completions', '{"prompt":[1,2,99999999]}', 400, 'invalid_request_error', 'invalid_value'],
	['negative token id', 'POST', '/v1/completions', '{"prompt":[1,-2]}', 400, 'invalid_request_error', 'invalid_type'],
	['max_tokens zero', 'POST', '/v1/completions', '{"prompt":"a","max_tokens":0}', 400, 'invalid_request_error', 'invalid_value'],
	['max_tokens a string', 'POST', '/v1/completions', '{"prompt":"a","max_tokens":"5"}', 400, 'invalid_request_error', 'invalid_type'],
	['max_tokens fractional', 'POST', '/v1/completions', '{"prompt":"a","max_tokens":2.5}', 400, 'invalid_request_error', 'invalid_type'],
	['max_tokens over the context', 'POST', '/v1/completions', '{"prompt":"a","max_tokens":100000}', 400, 'invalid_request_error', 'context_length_exceeded'],
	['max_completion_tokens negative', 'POST', '/v1/chat/completions', '{"messages":[{"role":"user","content":"hi"}],"max_completion_tokens":-1}', 400, 'invalid_request_error', 'invalid_value'],
	['temperature too high', 'POST', '/v1/completions', '{"prompt":"a","temperature":3}', 400, 'invalid_request_error', 'invalid_value'],
	['temperature a string', 'POST', '/v1/completions', '{"prompt":"a","temperature":"hot"}', 400, 'invalid_request_error', 'invalid_type'],
	['top_p zero', 'POST', '/v1/completions', '{"prompt":"a","top_p":0}', 400, 'invalid_request_error', 'invalid_value'],
	['top_p above one', 'POST', '/v1/completions', '{"prompt":"a","top_p":1.5}', 400, 'invalid_request_error', 'invalid_value'],
	['top_k below -1', 'POST', '/v1/completions', '{"prompt":"a","top_k":-5}', 400, 'invalid_request_error', 'invalid_value'],
	['min_p above one', 'POST', '/v1/completions', '{"prompt":"a","min_p":2}', 400, 'invalid_request_error', 'invalid_value'],
	['presence_penalty out of range', 'POST', '/v1/completions', '{"prompt":"a","presence_penalty":-3}', 400, 'invalid_request_error', 'invalid_value'],
	['frequency_penalty a bool', 'POST', '/v1/completions', '{"prompt":"a","frequency_penalty":true}', 400, 'invalid_request_error', 'invalid_type'],
	['repetition_penalty zero', 'POST', '/v1/completions', '{"prompt":"a","repetition_penalty":0}', 400, 'invalid_request_error', 'invalid_value'],
	['seed a string', 'POST', '/v1/completions', '{"prompt":"a","seed":"x"}', 400, 'invalid_request_error', 'invalid_type'],
	['stop a number', 'POST', '/v1/completions', '{"prompt":"a","stop":5}', 400, 'invalid_request_error', 'invalid_type'],
	['five stop strings', 'POST', '/v1/completions', '{"prompt":"a","stop":["a","b","c","d","e"]}', 400, 'invalid_request_error', 'invalid_value'],
	['empty stop string', 'POST', '/v1/completions', '{"prompt":"a","stop":[""]}', 400, 'invalid_request_error', 'invalid_value'],
	['stream a string', 'POST', '/v1/completions', '{"prompt":"a","stream":"yes"}', 400, 'invalid_request_error', 'invalid_type'],
	['stream_options without stream', 'POST', '/v1/completions', '{"prompt":"a","stream_options":{"include_usage":true}}', 400, 'invalid_request_error', 'invalid_value'],
	['include_usage a number', 'POST', '/v1/completions', '{"prompt":"a","stream":true,"stream_options":{"include_usage":1}}', 400, 'invalid_request_error', 'invalid_type'],
	['n = 2', 'POST', '/v1/chat/completions', '{"messages":[{"role":"user","content":"hi"}],"n":2}', 400, 'invalid_request_error', 'unsupported_parameter'],
	['logprobs a number in chat', 'POST', '/v1/chat/completions', '{"messages":[{"role":"user","content":"hi"}],"logprobs":3}', 400, 'invalid_request_error', 'invalid_type'],
	['top_logprobs without logprobs', 'POST', '/v1/chat/completions', '{"messages":[{"role":"user","content":"hi"}],"top_logprobs":2}', 400, 'invalid_request_error', 'invalid_value'],
	['top_logprobs 21', 'POST', '/v1/chat/completions', '{"messages":[{"role":"user","content":"hi"}],"logprobs":true,"top_logprobs":21}', 400, 'invalid_request_error', 'invalid_value'],
	['completion logprobs 6', 'POST', '/v1/completions', '{"prompt":"a","logprobs":6}', 400, 'invalid_request_error', 'invalid_value'],
	['tools on a template without a tool syntax', 'POST', '/v1/chat/completions', '{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}', 400, 'invalid_request_error', 'unsupported_parameter'],
	['a tool without its function', 'POST', '/v1/chat/completions', '{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function"}]}', 400, 'invalid_request_error', 'invalid_type'],
	['json response_format', 'POST', '/v1/chat/completions', '{"messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_object"}}', 400, 'invalid_request_error', 'unsupported_parameter'],
	['echo', 'POST', '/v1/completions', '{"prompt":"a","echo":true}', 400, 'invalid_request_error', 'unsupported_parameter'],
	['user a number', 'POST', '/v1/completions', '{"prompt":"a","user":5}', 400, 'invalid_request_error', 'invalid_type'],
	['prompt over the context', 'POST', '/v1/completions', JSON.stringify({ prompt: Array.from({ length: 5000 }, (_, i) => `w${i}`).join(' '), max_tokens: 1 }), 400, 'invalid_request_error', 'context_length_exceeded'],
	['body over --max-body-bytes', 'POST', '/v1/completions', JSON.stringify({ prompt: long }), 413, 'invalid_request_error', 'request_too_large'],
	['GET on chat', 'GET', '/v1/chat/completions', null, 405, 'invalid_request_error', 'method_not_allowed'],
	['DELETE on models', 'DELETE', '/v1/models', null, 405, 'invalid_request_error', 'method_not_allowed'],
	['POST on health', 'POST', '/health', '{}', 405, 'invalid_request_error', 'method_not_allowed'],
	['unknown route', 'GET', '/v1/embeddings', null, 404, 'invalid_request_error', 'not_found'],
	['unknown model path', 'GET', '/v1/models/gpt-9', null, 404, 'invalid_request_error', 'model_not_found'],
	['root path', 'GET', '/', null, 404, 'invalid_request_error', 'not_found'],
];

test('bad_requests', async () => {
	assert(bad.length >= 40, 'forty cases');
	const failures = [];
	for (const [name, method, p, body, status, type, code] of bad) {
		const r = curl(`${fronts.caddy}${p}`, { method, body });
		let j = null;
		try {
			j = JSON.parse(r.body);
		} catch {}
		if (r.status !== status || !j || !j.error || j.error.type !== type || j.error.code !== code ||
			typeof j.error.message !== 'string' || !('param' in j.error))
			failures.push(`${name}: ${r.status} ${r.body.slice(0, 200)}`);
		if (status === 405 && !r.headers.allow) failures.push(`${name}: no Allow header`);
	}
	assert(failures.length === 0, `${failures.length} of ${bad.length} wrong:\n      ${failures.join('\n      ')}`);
	console.log(`    ${bad.length} bad requests answered as expected`);
	const ok = curl(`${fronts.caddy}/v1/completions`, { method: 'POST', body: textBody() });
	eq(ok.status, 200, 'a good request afterwards');
});

test('metrics_promtool', async () => {
	const r = curl(`${fronts.caddy}/metrics`);
	eq(r.status, 200, 'status');
	for (const name of ['ember_requests_total', 'ember_sequences_running', 'ember_requests_waiting', 'ember_prompt_tokens_total',
		'ember_generation_tokens_total', 'ember_time_to_first_token_seconds_bucket', 'ember_inter_token_latency_seconds_bucket',
		'ember_request_duration_seconds_bucket', 'ember_queue_time_seconds_bucket', 'ember_kv_cache_usage_ratio'])
		assert(r.body.includes(name), `no ${name}`);
	if (!have('promtool')) throw new Error('promtool is missing (make deps installs prometheus)');
	const p = spawnSync('promtool', ['check', 'metrics'], { input: r.body });
	assert(p.status === 0, `promtool: ${p.stdout}${p.stderr}`);
});

test('disconnects_free_slots', async () => {
	const base = fronts.caddy;
	const metric = async (name) => {
		const t = await (await fetch(`${base}/metrics`)).text();
		const m = t.match(new RegExp(`^${name} (\\S+)$`, 'm'));
		return Number(m[1]);
	};
	const before = await metric('ember_sequences_finished_total\\{reason="aborted"\\}');
	// 20 clients start long streams and drop after their first text,
	await Promise.all(Array.from({ length: 20 }, async (_, i) => {
		const ac = new AbortController();
		const res = await fetch(`${base}/v1/completions`, {
			method: 'POST', signal: ac.signal, headers: { 'Content-Type': 'application/json' },
			body: JSON.stringify({ model, prompt: `Client ${i} says`, max_tokens: 3000, stream: true, seed: i }),
		});
		const reader = res.body.getReader();
		let got = '';
		while (!/"text":"[^"]/.test(got)) {
			const { value, done } = await reader.read();
			if (done) throw new Error('stream ended early');
			got += Buffer.from(value).toString();
		}
		ac.abort();
	}).concat(Array.from({ length: 4 }, async (_, i) => {
		// and 4 that do not stream drop after 300 ms, through nginx: it
		// closes the FastCGI connection when its client leaves (Caddy and
		// Apache keep it open until the answer is complete)
		const ac = new AbortController();
		const req = fetch(`${fronts.nginx}/v1/completions`, {
			method: 'POST', signal: ac.signal, headers: { 'Content-Type': 'application/json' },
			body: JSON.stringify({ model, prompt: `Patient ${i}`, max_tokens: 3000, seed: i }),
		}).catch(() => null);
		await sleep(300);
		ac.abort();
		await req;
	})));
	await waitFor('every slot free', async () => (await metric('ember_sequences_running')) === 0 && (await metric('ember_slots_busy')) === 0, 20000);
	const aborted = (await metric('ember_sequences_finished_total\\{reason="aborted"\\}')) - before;
	assert(aborted === 24, `${aborted} sequences cancelled, not 24`);
	const used = await metric('ember_kv_cache_blocks_used');
	eq(used, 0, 'KV blocks held');
	const ok = curl(`${base}/v1/completions`, { method: 'POST', body: textBody() });
	eq(ok.status, 200, 'served afterwards');
});

test('api_key', async () => {
	const base = fronts.keyed;
	const key = 'sk-ember-test-0123456789';
	eq(curl(`${base}/v1/models`).status, 401, 'no key');
	const wrong = curl(`${base}/v1/models`, { headers: { Authorization: 'Bearer sk-ember-test-0123456788' } });
	eq(wrong.status, 401, 'wrong key');
	eq(wrong.json().error.code, 'invalid_api_key', 'code');
	eq(curl(`${base}/v1/models`, { headers: { Authorization: `Bearer ${key}` } }).status, 200, 'right key');
	eq(curl(`${base}/v1/models`, { headers: { Authorization: 'Bearer second-key' } }).status, 200, 'second key');
	eq(curl(`${base}/health`).status, 200, '/health stays open');
	const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: key, maxRetries: 0 });
	const r = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 });
	eq(r.choices.length, 1, 'a completion with the key');
});

test('queue_timeout_503', async () => {
	// The keyed worker has one slot and --queue-timeout 0.5: while a long
	// stream holds the slot, the next request waits half a second, then 503.
	const base = fronts.keyed;
	const auth = { Authorization: 'Bearer second-key' };
	const ac = new AbortController();
	const res = await fetch(`${base}/v1/completions`, {
		method: 'POST', signal: ac.signal, headers: { 'Content-Type': 'application/json', ...auth },
		body: JSON.stringify({ model, prompt: 'Hold the slot', max_tokens: 3000, stream: true }),
	});
	const reader = res.body.getReader();
	await reader.read();
	const r = curl(`${base}/v1/completions`, { method: 'POST', headers: auth, body: textBody() });
	ac.abort();
	eq(r.status, 503, 'status');
	eq(r.json().error.type, 'server_error', 'type');
	eq(r.json().error.code, 'overloaded', 'code');
	assert(Number(r.headers['retry-after']) > 0, 'Retry-After');
	await waitFor('the slot back', () => curl(`${base}/v1/completions`, { method: 'POST', headers: auth, body: textBody() }).status === 200, 10000);
});

test('no_text_in_logs', async () => {
	// A unique word in a prompt, a good request and a malformed one: it must
	// not reach the log.
	const word = `zebracorn${Date.now()}`;
	curl(`${fronts.caddy}/v1/completions`, { method: 'POST', body: textBody({ prompt: `The ${word} runs`, max_tokens: 4 }) });
	curl(`${fronts.caddy}/v1/chat/completions`, { method: 'POST', body: chatBody({ messages: [{ role: 'user', content: word }], stream: true }) });
	curl(`${fronts.caddy}/v1/completions`, { method: 'POST', body: `{"prompt": ${word}}` });
	const log = fs.readFileSync(path.join(dir, 'main.log'), 'utf8');
	assert(log.split('\n').filter((l) => l.includes('"msg":"request"')).length > 10, 'request lines are logged');
	assert(!log.includes(word), 'the prompt word is in the log');
	for (const line of log.split('\n').filter(Boolean)) JSON.parse(line);
});

test('fastcgi_get_values', async () => {
	// A front end may ask with FCGI_GET_VALUES whether it can multiplex
	// requests on one connection: the answer must be FCGI_MPXS_CONNS=0.
	const names = ['FCGI_MPXS_CONNS', 'FCGI_MAX_REQS'];
	const body = Buffer.concat(names.map((n) => Buffer.concat([Buffer.from([n.length, 0]), Buffer.from(n)])));
	const head = Buffer.from([1, 9, 0, 0, body.length >> 8, body.length & 255, 0, 0]);
	const got = await new Promise((resolve, reject) => {
		const sock = net.createConnection(path.join(dir, 'main.sock'));
		let buf = Buffer.alloc(0);
		sock.on('connect', () => sock.write(Buffer.concat([head, body])));
		sock.on('data', (d) => {
			buf = Buffer.concat([buf, d]);
			if (buf.length >= 8 && buf.length >= 8 + buf.readUInt16BE(4) + buf[6]) {
				sock.end();
				resolve(buf);
			}
		});
		sock.on('error', reject);
		setTimeout(() => reject(new Error('no answer')), 5000);
	});
	eq(got[1], 10, 'record type FCGI_GET_VALUES_RESULT');
	const pairs = {};
	let p = 8;
	const end = 8 + got.readUInt16BE(4);
	while (p < end) {
		const nl = got[p], vl = got[p + 1];
		pairs[got.subarray(p + 2, p + 2 + nl).toString()] = got.subarray(p + 2 + nl, p + 2 + nl + vl).toString();
		p += 2 + nl + vl;
	}
	eq(pairs.FCGI_MPXS_CONNS, '0', 'FCGI_MPXS_CONNS');
});

test('cgi', async () => {
	const env = { ...process.env, GATEWAY_INTERFACE: 'CGI/1.1', REQUEST_METHOD: 'POST', REQUEST_URI: '/v1/completions',
		SCRIPT_NAME: '/v1/completions', CONTENT_LENGTH: String(Buffer.byteLength(textBody())) };
	const r = spawnSync(worker, ['--model', path.join(models, model), '--threads', '1'], { env, input: textBody() });
	eq(r.status, 0, `exit status (${r.stderr})`);
	const out = r.stdout.toString();
	assert(out.startsWith('Content-Type: application/json\r\n'), `CGI head: ${out.slice(0, 80)}`);
	const bad = spawnSync(worker, ['--model', path.join(models, model), '--threads', '1'],
		{ env: { ...env, CONTENT_LENGTH: '3' }, input: '{"x' });
	assert(bad.stdout.toString().startsWith('Status: 400 Bad Request\r\n'), `CGI error head: ${bad.stdout.toString().slice(0, 80)}`);
	const j = JSON.parse(out.slice(out.indexOf('\r\n\r\n') + 4));
	const viaCaddy = curl(`${fronts.caddy}/v1/completions`, { method: 'POST', body: textBody() }).json();
	eq(j.choices[0].text, viaCaddy.choices[0].text, 'same text as the server');
});

test('inherited_socket_and_prefix', async () => {
	// spawn-fcgi hands the worker a listening socket as fd 0 (as Apache
	// mod_fcgid does); cgi-fcgi then speaks FastCGI to it with parameters
	// split the way various front ends split them.
	const sock = path.join(dir, 'spawned.sock');
	const p = start('spawned', 'spawn-fcgi', ['-n', '-s', sock, '-M', '0666', '--', worker, '--model', path.join(models, model),
		'--threads', '1', '--prefix', '/llm']);
	await waitFor('spawn-fcgi socket', () => fs.existsSync(sock) && !p.exited);
	const ask = (env) => {
		const r = spawnSync('cgi-fcgi', ['-bind', '-connect', sock], { env: { PATH: process.env.PATH, REQUEST_METHOD: 'GET', ...env } });
		const out = r.stdout.toString();
		return Number((out.match(/^Status: (\d+)/m) || [0, 200])[1]);
	};
	await waitFor('the spawned worker', () => ask({ REQUEST_URI: '/llm/health' }) === 200);
	eq(ask({ REQUEST_URI: '/llm/v1/models?x=1' }), 200, 'REQUEST_URI with a query');
	eq(ask({ SCRIPT_NAME: '/llm', PATH_INFO: '/v1/models' }), 200, 'SCRIPT_NAME + PATH_INFO');
	eq(ask({ SCRIPT_NAME: '/llm/v1/models' }), 200, 'SCRIPT_NAME alone');
	eq(ask({ REQUEST_URI: '/v1/models' }), 404, 'without the prefix');
	eq(ask({ REQUEST_URI: '/llmx/v1/models' }), 404, 'a longer first segment');
	p.kill('SIGTERM');
});

test('sigterm_drains', async () => {
	// SIGTERM while four streams run and two more wait for a slot: all six
	// finish with [DONE], then the worker exits 0 and new connections wait
	// in the backlog for whoever listens next.
	const w = await startWorker('drain', ['--slots', '4', '--queue-timeout', '300', '--drain-timeout', '300']);
	const base = await startCaddy('caddy-drain', w.sock);
	const go = (i) => fetch(`${base}/v1/completions`, {
		method: 'POST', headers: { 'Content-Type': 'application/json' },
		body: JSON.stringify({ model, prompt: `Stream ${i}`, max_tokens: 100, stream: true, seed: i }),
	}).then((r) => r.text());
	const streams = Array.from({ length: 6 }, (_, i) => go(i));
	await waitFor('four running', async () => /^ember_sequences_running 4$/m.test(await (await fetch(`${base}/metrics`)).text()), 10000);
	const exited = new Promise((resolve) => w.on('exit', (code) => resolve(code)));
	w.kill('SIGTERM');
	const bodies = await Promise.all(streams);
	for (const b of bodies) eq(sseText(b, 'text').finish, 'length', 'a drained stream ran to its end');
	eq(await exited, 0, 'exit status');
});

test('journald_fields', async () => {
	// With stderr connected to the journal (JOURNAL_STREAM names it), the
	// worker logs through sd_journal_send: a stand-in for journald's socket
	// in a private mount namespace reads the fields back.
	const capture = path.join(path.dirname(worker).replace(/\/asan$/, ''), 'journal-capture');
	if (process.getuid() !== 0 || spawnSync('unshare', ['-m', 'true']).status !== 0 || !fs.existsSync(capture))
		throw { skip: 'needs root, unshare -m and build/journal-capture' };
	const err = path.join(dir, 'journal-stderr');
	const script = `set -e
mkdir -p /run/systemd/journal
mount -t tmpfs tmpfs /run/systemd/journal
"${capture}" /run/systemd/journal/socket EMBER_STATUS= 20 > "${dir}/journal.txt" &
sleep 0.3
: > "${err}"
exec 2>>"${err}"
export JOURNAL_STREAM=$(stat -c %d:%i "${err}")
GATEWAY_INTERFACE=CGI/1.1 REQUEST_METHOD=GET REQUEST_URI=/v1/models HTTP_X_REQUEST_ID=journal-check-7 \
	"${worker}" --model "${path.join(models, model)}" --threads 1 > /dev/null
wait $!`;
	const r = spawnSync('unshare', ['-m', 'sh', '-c', script]);
	const text = fs.existsSync(path.join(dir, 'journal.txt')) ? fs.readFileSync(path.join(dir, 'journal.txt'), 'utf8') : '';
	assert(r.status === 0, `capture: status ${r.status} ${r.stderr}\n${text}`);
	const entry = text.split('\n\n').find((e) => e.includes('EMBER_STATUS='));
	for (const f of ['EMBER_REQUEST_ID=journal-check-7', 'EMBER_STATUS=200', 'EMBER_ROUTE=models', 'EMBER_METHOD=GET',
		'EMBER_DURATION_MS=', 'EMBER_PROMPT_TOKENS=0', 'EMBER_COMPLETION_TOKENS=0', 'EMBER_TTFT_MS=', 'PRIORITY=6',
		'SYSLOG_IDENTIFIER=ember-worker', 'MESSAGE='])
		assert(entry.includes(f), `no ${f} in:\n${entry}`);
	eq(fs.readFileSync(err, 'utf8'), '', 'nothing on stderr besides the journal');
});

// --- emberd: the pool, socket-activated by systemd-socket-activate ------------

const emberd = () => path.join(path.dirname(worker), 'emberd');

async function startPool(name, flags, workerFlags = [], modelDir = path.join(models, model)) {
	const sock = path.join(dir, `${name}.sock`);
	const p = start(name, 'systemd-socket-activate', ['-l', sock, emberd(), '--model', modelDir,
		'--worker', worker, ...flags, '--', '--threads', '1', ...workerFlags]);
	await waitFor(`${name}'s socket`, () => fs.existsSync(sock));
	fs.chmodSync(sock, 0o666); // for the front ends' users
	p.sock = sock;
	return p;
}

// What runs as p: systemd-socket-activate until the first connection, then
// (exec) emberd.
const commOf = (p) => fs.readFileSync(`/proc/${p.pid}/comm`, 'utf8').trim();

// systemd-socket-activate execs emberd: the workers are its children.
const workersOf = (p) => spawnSync('pgrep', ['-P', String(p.pid)]).stdout.toString().split('\n').filter(Boolean).map(Number);

test('pool_scales_from_zero_and_back', async () => {
	const p = await startPool('pool', ['--max-workers', '3', '--spare', '1', '--slots', '2', '--idle-timeout', '2'], ['--queue-timeout', '300']);
	const base = await startCaddy('caddy-pool', p.sock, false);
	// Nothing runs before the first request: not even emberd.
	assert(commOf(p).startsWith('systemd-socket'), `before any request: ${commOf(p)}`);
	eq(workersOf(p).length, 0, 'workers at start');
	let served = 0;
	let failed = 0;
	const first = curl(`${base}/v1/completions`, { method: 'POST', body: textBody() });
	first.status === 200 ? served++ : failed++;
	eq(first.status, 200, 'the first request, through a cold start');
	eq(commOf(p), 'emberd', 'activated');
	const m = curl(`${base}/metrics`).body;
	assert(/^ember_pool_workers\{state="ready"\} [12]$/m.test(m) && /^ember_pool_cold_starts_total [12]$/m.test(m),
		`pool metrics: ${m.split('\n').filter((l) => l.startsWith('ember_pool')).join('; ')}`);
	const pt = spawnSync('promtool', ['check', 'metrics'], { input: m });
	eq(pt.status, 0, `promtool: ${pt.stdout}${pt.stderr}`);
	// A burst of 32 streams: the pool grows to --max-workers.
	let most = 0;
	let watching = true;
	const watch = (async () => {
		while (watching) {
			most = Math.max(most, workersOf(p).length);
			await sleep(50);
		}
	})();
	const results = await Promise.all(Array.from({ length: 32 }, (_, i) => streamOnce(base, i, 48)));
	watching = false;
	await watch;
	for (const r of results) streamedToLength(r) ? served++ : failed++;
	console.log(`    the burst of 32 streams: ${most} workers at most; ${served} requests served, ${failed} failed`);
	eq(failed, 0, 'failed requests');
	eq(most, 3, 'workers at the busiest');
	await waitFor('the pool back to 0 workers', () => workersOf(p).length === 0, 15000);
	const again = curl(`${base}/v1/completions`, { method: 'POST', body: textBody() });
	eq(again.status, 200, 'a request after scaling to zero');
	served++;
	eq(served, 34, 'requests served');
	// /metrics covers the pool since emberd started, workers that have
	// exited included, whichever worker answers.
	const pm = curl(`${base}/metrics`).body;
	const val = (re) => Number((re.exec(pm) || [])[1]);
	eq(val(/^ember_requests_total\{route="completions",status="200"\} (\d+)$/m), 34, 'completions counted by the pool');
	eq(val(/^ember_time_to_first_token_seconds_count (\d+)$/m), 34, 'first tokens counted by the pool');
	assert(val(/^ember_generation_tokens_total (\d+)$/m) >= 32 * 48, 'generated tokens counted by the pool');
	assert(val(/^ember_pool_workers\{state="ready"\} (\d+)$/m) === 1 && val(/^ember_slots (\d+)$/m) === 2,
		'the pool\'s gauges: one worker of 2 slots');
	eq(spawnSync('promtool', ['check', 'metrics'], { input: pm }).status, 0, 'promtool on the pool\'s metrics');
	const log = fs.readFileSync(path.join(dir, 'pool.log'), 'utf8');
	assert(/emberd: stopping worker \d+ \(pid \d+\): idle/.test(log), 'no idle stop in the log');
	p.kill('SIGTERM');
});

test('pool_worker_killed', async () => {
	// Each worker takes 8 streams and no more (--queue 0): 16 streams land on
	// two workers. One is killed: its streams end in error at the client,
	// the other's complete, and the pool starts a replacement.
	const p = await startPool('pool-kill', ['--max-workers', '3', '--spare', '1', '--slots', '8', '--idle-timeout', '60'], ['--queue', '0']);
	const base = await startCaddy('caddy-kill', p.sock, false);
	let started = 0;
	const pending = Array.from({ length: 16 }, (_, i) => fetch(`${base}/v1/completions`, {
		method: 'POST', headers: { 'Content-Type': 'application/json' },
		body: JSON.stringify({ model, prompt: `Request ${i}`, max_tokens: 300, stream: true, seed: i }),
	}).then(async (r) => {
		let body = '';
		try {
			for await (const part of r.body) {
				if (!body.includes('"text"') && Buffer.from(part).toString().includes('"text"')) started++;
				body += Buffer.from(part).toString();
			}
		} catch {}
		return { status: r.status, body };
	}).catch((e) => ({ status: 0, body: String(e) })));
	await waitFor('16 streams running on two workers', () => started === 16, 30000);
	const victim = workersOf(p)[0]; // the first worker: 8 of the streams
	process.kill(victim, 'SIGKILL');
	const results = await Promise.all(pending);
	let complete = 0;
	let broken = 0;
	for (const r of results) {
		try {
			if (sseText(r.body, 'text').finish === 'length') complete++;
			else broken++;
		} catch (e) {
			if (process.env.EMBER_DEBUG) console.log(`    ${r.status} ${e.message} ...${r.body.slice(-200)}`);
			broken++;
		}
	}
	console.log(`    after SIGKILL of one worker: ${complete} streams complete, ${broken} ended in error`);
	assert(broken > 0 && broken <= 8, `${broken} streams broken`);
	eq(complete + broken, 16, 'every stream ended');
	const ok = curl(`${base}/v1/completions`, { method: 'POST', body: textBody() });
	eq(ok.status, 200, 'served afterwards');
	await waitFor('the pool back at its target', () => workersOf(p).length >= 1 && !workersOf(p).includes(victim), 10000);
	const log = fs.readFileSync(path.join(dir, 'pool-kill.log'), 'utf8');
	assert(log.includes('was killed by signal 9'), 'the crash is in the log');
	p.kill('SIGTERM');
});

test('pool_crash_loop_backs_off', async () => {
	// A worker that dies at start, with a connection waiting: emberd must
	// slow down, not spin at its 100 ms heartbeat.
	const sock = path.join(dir, 'crashy.sock');
	const p = start('crashy', 'systemd-socket-activate', ['-l', sock, emberd(), '--model', path.join(models, model),
		'--worker', '/bin/false']);
	await waitFor('crashy socket', () => fs.existsSync(sock));
	const c = net.createConnection(sock); // activates emberd, then waits in the backlog
	c.on('error', () => {});
	await sleep(5000);
	c.destroy();
	const log = fs.readFileSync(path.join(dir, 'crashy.log'), 'utf8');
	const starts = (log.match(/started worker/g) || []).length;
	console.log(`    ${starts} starts in 5 s of a worker that exits at once`);
	assert(starts >= 3 && starts <= 8, `${starts} starts`);
	assert(/crashed \d+ times in 10 s: next start in/.test(log), 'no back-off line in the log');
	p.kill('SIGTERM');
});

test('pool_engine_failure_ends_the_worker', async () => {
	// EMBER_FAULT_STEPS=40: each worker's steps fail from the 41st on, as
	// after a GPU's sticky error. A request within the first steps is
	// answered; a stream running into the failure ends with the engine's
	// error event; the worker then exits with status 1 (not staying ready
	// to fail every request) and emberd starts another, which answers.
	const sock = path.join(dir, 'pool-fault.sock');
	const p = start('pool-fault', 'systemd-socket-activate', ['-l', sock, '-E', 'EMBER_FAULT_STEPS=40', emberd(),
		'--model', path.join(models, model), '--worker', worker, '--max-workers', '2', '--spare', '0',
		'--idle-timeout', '60', '--', '--threads', '1']);
	await waitFor('pool-fault socket', () => fs.existsSync(sock));
	fs.chmodSync(sock, 0o666);
	const base = await startCaddy('caddy-fault', sock, false);
	const post = (body) => fetch(`${base}/v1/completions`, {
		method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ model, ...body }),
	});
	const first = await post({ prompt: 'Before the fault', max_tokens: 5, seed: 1 });
	eq(first.status, 200, 'a request within the first steps');
	const victims = workersOf(p);
	eq(victims.length, 1, 'one worker');
	const body = await (await post({ prompt: 'Into the fault', max_tokens: 100, stream: true, seed: 2 })).text();
	assert(/"code":"engine_error"/.test(body) && !body.includes('[DONE]'), `the stream ends in the engine's error: ...${body.slice(-200)}`);
	const log = path.join(dir, 'pool-fault.log');
	await waitFor('the failed worker to exit', () => fs.readFileSync(log, 'utf8').includes(`(pid ${victims[0]}) exited with status 1`), 15000);
	const text = fs.readFileSync(log, 'utf8');
	assert(text.includes('engine step failed: injected failure'), 'the failure is in the log');
	const after = await post({ prompt: 'After the fault', max_tokens: 5, seed: 3 });
	eq(after.status, 200, 'a new worker answers');
	assert(!workersOf(p).includes(victims[0]), 'the failed worker is gone');
	p.kill('SIGTERM');
});

test('pool_max_requests_recycles', async () => {
	// --max-requests 3: a worker is replaced after 3 requests; 8 requests
	// one after another all succeed across the replacements.
	const p = await startPool('pool-recycle', ['--max-workers', '2', '--spare', '0', '--max-requests', '3', '--idle-timeout', '60']);
	const base = await startCaddy('caddy-recycle', p.sock, false);
	const seen = new Set();
	for (let i = 0; i < 8; i++) {
		const r = curl(`${base}/v1/completions`, { method: 'POST', body: textBody({ max_tokens: 2, seed: i }) });
		eq(r.status, 200, `request ${i}`);
		for (const w of workersOf(p)) seen.add(w);
		await sleep(250); // a heartbeat or two
	}
	const log = fs.readFileSync(path.join(dir, 'pool-recycle.log'), 'utf8');
	const recycled = (log.match(/--max-requests reached/g) || []).length;
	console.log(`    8 requests with --max-requests 3: ${recycled} workers recycled, ${seen.size} worker processes seen`);
	assert(recycled >= 2 && seen.size >= 3, `${recycled} recycled, ${seen.size} seen`);
	assert(!log.includes('crashed'), 'a recycled worker counted as a crash');
	p.kill('SIGTERM');
});

// --listen HOST:PORT, the same code in the worker and in emberd: FastCGI
// over TCP from Caddy to each; a bad address is refused, saying why.
test('listen_tcp_worker_and_pool', async () => {
	const listening = (port) => () => new Promise((resolve) => {
		const c = net.createConnection(port, '127.0.0.1', () => { c.end(); resolve(true); });
		c.on('error', () => resolve(false));
	});
	const wport = await freePort();
	const w = start('tcp-worker', worker, ['--model', path.join(models, model), '--listen', `127.0.0.1:${wport}`, '--threads', '1']);
	await waitFor('the worker on its TCP port', listening(wport));
	const wbase = await startCaddy('caddy-tcp-worker', `127.0.0.1:${wport}`);
	const a = curl(`${wbase}/v1/completions`, { method: 'POST', body: textBody({ max_tokens: 4 }) });
	eq(a.status, 200, 'the worker over TCP');
	const pport = await freePort();
	const p = start('tcp-pool', emberd(), ['--model', path.join(models, model), '--worker', worker,
		'--listen', `127.0.0.1:${pport}`, '--max-workers', '1', '--', '--threads', '1']);
	await waitFor('emberd ready', () => fs.readFileSync(path.join(dir, 'tcp-pool.log'), 'utf8').includes(`ready: 127.0.0.1:${pport}`));
	const pbase = await startCaddy('caddy-tcp-pool', `127.0.0.1:${pport}`, false);
	const b = curl(`${pbase}/v1/completions`, { method: 'POST', body: textBody({ max_tokens: 4 }) });
	eq(b.status, 200, 'the pool over TCP');
	eq(JSON.parse(b.body).choices[0].text, JSON.parse(a.body).choices[0].text, 'the same answer from both');
	for (const [prog, addr, want] of [[emberd(), '127.0.0.1:', /want a socket path or HOST:PORT/],
		[worker, 'no-such-host.invalid:9000', /--listen no-such-host\.invalid:9000: /],
		[emberd(), `127.0.0.1:${wport}`, /bind: Address already in use/]]) {
		const r = spawnSync(prog, ['--model', path.join(models, model), '--listen', addr], { timeout: 20000 });
		assert(r.status !== 0 && want.test(r.stderr.toString()), `${path.basename(prog)} --listen ${addr}: status ${r.status}, ${r.stderr}`);
	}
	w.kill('SIGTERM');
	p.kill('SIGTERM');
});

// emberd --listen's unix socket: 0660 unless --listen-mode says otherwise,
// the group --listen-group names, and the file gone when the pool exits
// (also when it fails to start); a group that does not exist is refused.
test('pool_listen_socket_mode', async () => {
	const gid = process.getgid();
	for (const [name, extra, mode, group] of [['sock-default', [], 0o660, null], ['sock-0600', ['--listen-mode', '0600', '--listen-group', String(gid)], 0o600, gid]]) {
		const sock = path.join(dir, `${name}.sock`);
		const p = start(name, emberd(), ['--model', path.join(models, model), '--worker', worker, '--listen', sock,
			'--max-workers', '1', ...extra, '--', '--threads', '1']);
		await waitFor(`${name} ready`, () => fs.readFileSync(path.join(dir, `${name}.log`), 'utf8').includes(`ready: ${sock}`));
		const st = fs.statSync(sock);
		eq((st.mode & 0o777).toString(8), mode.toString(8), `${name}: mode`);
		if (group !== null) eq(st.gid, group, `${name}: group`);
		const exited = new Promise((resolve) => p.on('exit', (code) => resolve(code)));
		p.kill('SIGTERM');
		eq(await exited, 0, `${name}: exit status`);
		assert(!fs.existsSync(sock), `${name}: the socket file is left behind`);
	}
	const bad = spawnSync(emberd(), ['--model', path.join(models, model), '--listen', path.join(dir, 'bad.sock'),
		'--listen-group', 'no-such-group-ember'], { timeout: 20000 });
	assert(bad.status !== 0 && /no such group/.test(bad.stderr.toString()), `a missing group: ${bad.status} ${bad.stderr}`);
	const gone = spawnSync(emberd(), ['--model', path.join(dir, 'no-such-model'), '--listen', path.join(dir, 'gone.sock')], { timeout: 20000 });
	assert(gone.status !== 0 && !fs.existsSync(path.join(dir, 'gone.sock')), 'a failed start leaves its socket file');
});

test('pool_verify_refuses_changed_file', async () => {
	const m = path.join(dir, 'verified');
	fs.cpSync(path.join(models, model), m, { recursive: true });
	const files = fs.readdirSync(m).filter((f) => /\.(json|safetensors)$/.test(f));
	const sums = spawnSync('sha256sum', files, { cwd: m }).stdout.toString();
	fs.writeFileSync(path.join(m, 'ember.sha256'), sums);
	const fd = fs.openSync(path.join(m, 'model.safetensors'), 'r+');
	const size = fs.fstatSync(fd).size;
	const b = Buffer.alloc(1);
	fs.readSync(fd, b, 0, 1, size - 5);
	b[0] ^= 0x40;
	fs.writeSync(fd, b, 0, 1, size - 5);
	fs.closeSync(fd);
	const r = spawnSync(emberd(), ['--model', m, '--verify', '--listen', path.join(dir, 'verify.sock')], { timeout: 20000 });
	eq(r.status, 1, 'exit status');
	const err = r.stderr.toString();
	assert(/model\.safetensors does not match its sha256 in ember\.sha256; refusing to serve it/.test(err), `log: ${err}`);
});

test('pool_sighup_and_sigterm_under_load', async () => {
	// Eight clients send requests back to back; SIGHUP twice (the model is
	// read again and every worker replaced): no request fails. Then SIGTERM
	// with streams in flight: they all finish.
	const p = await startPool('pool-hup', ['--max-workers', '2', '--spare', '1', '--slots', '4', '--idle-timeout', '60']);
	const base = await startCaddy('caddy-hup', p.sock, false);
	eq(curl(`${base}/v1/completions`, { method: 'POST', body: textBody() }).status, 200, 'first request');
	const before = workersOf(p);
	const load = loadClients(base, 8);
	await sleep(1500);
	process.kill(p.pid, 'SIGHUP');
	await waitFor('the first reload', () => fs.readFileSync(path.join(dir, 'pool-hup.log'), 'utf8').includes('replaced after SIGHUP'), 20000);
	await sleep(1500);
	process.kill(p.pid, 'SIGHUP');
	await sleep(2500);
	const { served, failures } = await load.stop();
	const after = workersOf(p);
	console.log(`    two SIGHUPs under load: ${served} requests served, ${failures.length} failed; workers ${before.join(',')} -> ${after.join(',')}`);
	eq(failures, [], 'failed requests');
	assert(served > 20, `only ${served} requests`);
	assert(!after.some((w) => before.includes(w)), 'the old workers are still running');
	// SIGTERM with 6 streams in flight.
	const streams = await streamsInFlight(base, 6, 150, 'Last');
	const exited = new Promise((resolve) => p.on('exit', (code) => resolve(code)));
	process.kill(p.pid, 'SIGTERM');
	const bodies = await streams.bodies;
	for (const b of bodies) eq(sseText(b, 'text').finish, 'length', 'a stream in flight at SIGTERM ran to its end');
	eq(await exited, 0, 'emberd exit status');
});

// --- main ---------------------------------------------------------------------

async function main() {
	dir = ctx.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ember-http-'));
	fs.chmodSync(dir, 0o755); // the front ends' workers run as www-data under root
	const missing = ['caddy', 'apache2', 'nginx', 'curl', 'spawn-fcgi', 'cgi-fcgi'].filter((c) => !have(c) && !fs.existsSync(`/usr/sbin/${c}`));
	try {
		if (missing.length) throw new Error(`missing ${missing.join(', ')} (make deps installs them)`);
		const main = await startWorker('main', ['--keepalive', '0.1', '--slots', '4', '--queue', '32', '--ctx', '4096']);
		fronts.caddy = await startCaddy('caddy', main.sock);
		fronts.apache = await startApache(main.sock);
		fronts.nginx = await startNginx(main.sock);
		fs.writeFileSync(path.join(dir, 'keys'), '# test keys\nsk-ember-test-0123456789\n\nsecond-key\n');
		const keyed = await startWorker('keyed', ['--api-key-file', path.join(dir, 'keys'), '--slots', '1', '--queue-timeout', '0.5']);
		fronts.keyed = await startCaddy('caddy-keyed', keyed.sock);
	} catch (e) {
		console.log(`FAIL setup: ${e.message}`);
		for (const f of fs.readdirSync(dir).filter((f) => f.endsWith('.log')))
			console.log(`--- ${f}\n${fs.readFileSync(path.join(dir, f), 'utf8').slice(-2000)}`);
		cleanup();
		console.log(`0 passed, 1 failed, 0 skipped`);
		process.exit(1);
	}
	let { passed, failed, skipped } = await runTests(tests, only);
	for (const c of ctx.children) if (c.exited && c.exitCode && !['spawned'].includes(c.name)) {
		console.log(`FAIL ${c.name} exited with status ${c.exitCode}`);
		failed++;
	}
	if (failed) for (const f of ['main.log', 'apache-error.log', 'nginx-error.log'])
		if (fs.existsSync(path.join(dir, f))) console.log(`--- ${f}\n${fs.readFileSync(path.join(dir, f), 'utf8').slice(-3000)}`);
	cleanup();
	console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
	process.exit(failed ? 1 : 0);
}

process.on('SIGINT', () => { cleanup(); process.exit(130); });
main();
