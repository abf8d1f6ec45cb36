// Drives headless Chromium (Debian's /usr/bin/chromium, through playwright-core) over pages that
// pprofd serves or that `go tool pprof -http` serves of a pprofd profile, and prints what a
// person would see as one JSON object on stdout. tests/browser.rs starts the servers, runs this
// script and asserts on its report; screenshots go to the directory it is given.
//
//   node pages.mjs index  URL OUT_DIR              the index page and every link on it
//   node pages.mjs flame  URL FUNCTION OUT_DIR     a profile opened as a browser opens it
//   node pages.mjs pprof  BASE FUNCTION MARKER OUT_DIR
//                        go tool pprof's flame graph (the boxes whose names hold MARKER, before and
//                        after a click on the first), top and source views
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [command, url, ...rest] = process.argv.slice(2);

// A fresh profile directory and the flags that keep Chromium off the network: on a closed
// network its background connections stall it.
const userDataDir = mkdtempSync(join(tmpdir(), 'pprofd-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
  viewport: { width: 1600, height: 1000 },
});
// Generous: the machine may be loaded, and a CPU profile link takes its seconds.
context.setDefaultTimeout(60_000);
const page = context.pages()[0] ?? await context.newPage();

try {
  const report = await ({ index, flame, pprof }[command] ?? unknown)(url, ...rest);
  process.stdout.write(JSON.stringify(report) + '\n');
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}

async function unknown() {
  throw new Error(`unknown command ${command}: index, flame or pprof`);
}

// What a navigation answered: status, type and the start of the text it shows.
async function visit(target) {
  const response = await page.goto(target, { waitUntil: 'load' });
  const text = await page.evaluate(() => document.body ? document.body.innerText : document.documentElement.textContent);
  return {
    url: target,
    status: response.status(),
    contentType: response.headers()['content-type'] ?? '',
    text: (text ?? '').slice(0, 400),
  };
}

// The index page, then each link on it as a browser follows it; the CPU profile's link with a
// short `seconds`, so the check does not wait the default 30 s.
async function index(target, outDir) {
  const page_ = await visit(target);
  await page.screenshot({ path: join(outDir, 'index.png'), fullPage: true });
  const links = await page.$$eval('a', (anchors) => anchors.map((a) => ({ name: a.textContent.trim(), href: a.href })));
  const answers = [];
  for (const link of links) {
    const href = new URL(link.href);
    if (href.pathname.endsWith('/profile')) href.searchParams.set('seconds', '1');
    answers.push({ ...link, ...(await visit(href.toString())) });
  }
  return { page: page_, links: answers };
}

// A profile endpoint opened in the browser: the SVG flame graph, the frame of `functionName`
// (the name drawn on it, its width), and the same after a click on it, which zooms to it.
async function flame(target, functionName, outDir) {
  const page_ = await visit(target);
  await page.screenshot({ path: join(outDir, 'flame.png') });
  const frame = async () => page.evaluate((name) => {
    const svgWidth = document.documentElement.getBoundingClientRect().width;
    for (const g of document.querySelectorAll('g')) {
      const title = g.querySelector('title');
      if (!title || !title.textContent.startsWith(name + ' (')) continue;
      const rect = g.querySelector('rect').getBoundingClientRect();
      const unzoom = document.getElementById('unzoom');
      return {
        title: title.textContent,
        drawn: g.querySelector('text').textContent.trim(),
        width: rect.width,
        svgWidth,
        reset: unzoom ? !unzoom.classList.contains('hide') : null,
      };
    }
    return null;
  }, functionName);
  const before = await frame();
  let after = null;
  if (before) {
    // The widest frame of that function: with several stacks it appears more than once.
    await page.locator('g', { has: page.locator(`title:text-matches("^${escapeRegex(functionName)} \\\\(")`) }).first().click();
    await page.waitForTimeout(300);
    after = await frame();
    await page.screenshot({ path: join(outDir, 'flame-zoomed.png') });
  }
  return { page: page_, before, after };
}

// `go tool pprof -http`'s views of one profile: the flame graph (the names drawn on the boxes
// that hold `marker`), the top table (its rows' names) and the source listing of
// `functionName` (its text).
async function pprof(base, functionName, marker, outDir) {
  const flameGraph = await visit(new URL('/ui/flamegraph', base).toString());
  // Box names: pprof draws the longest form of a name that fits its box.
  const boxes = () => page.evaluate((name) => [...document.querySelectorAll('*')]
    .filter((e) => e.children.length === 0 && e.textContent.includes(name))
    .map((e) => ({ text: e.textContent.trim(), width: e.getBoundingClientRect().width })), marker);
  const drawn = await boxes();
  await page.screenshot({ path: join(outDir, 'pprof-flamegraph.png') });
  // A click on the function's box zooms to it, as a person does to read a narrow one.
  let zoomed = [];
  if (drawn.length > 0) {
    await page.getByText(drawn[0].text, { exact: true }).first().click();
    await page.waitForTimeout(300);
    zoomed = await boxes();
    await page.screenshot({ path: join(outDir, 'pprof-flamegraph-zoomed.png') });
  }

  const top = await visit(new URL('/ui/top', base).toString());
  const rows = await page.$$eval('#toptable tr', (trs) => trs.map((tr) => [...tr.cells].map((c) => c.textContent.trim())));
  await page.screenshot({ path: join(outDir, 'pprof-top.png') });

  const sourceUrl = new URL('/ui/source', base);
  sourceUrl.searchParams.set('f', '^' + escapeRegex(functionName) + '$');
  const source = await visit(sourceUrl.toString());
  const listing = await page.evaluate(() => document.getElementById('content')?.innerText ?? document.body.innerText);
  await page.screenshot({ path: join(outDir, 'pprof-source.png'), fullPage: true });

  return { flameGraph: { ...flameGraph, drawn, zoomed }, top: { ...top, rows }, source: { ...source, listing: listing.slice(0, 4000) } };
}

function escapeRegex(text) {
  return text.replace(/[\\^$.*+?()[\]{}|]/g, '\\$&');
}
