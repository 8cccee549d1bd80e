// A non-Python producer: celery-node on Celery's defaults (its default queue, `celery`) submits a
// job through the public task legato.submit, then asks legato.status until the run has ended.
// Usage: node submit_and_wait.js REDIS_URL PIPELINE INPUT_JSON  -> prints the run record as JSON
const celery = require("celery-node");

const [url, pipeline, input] = process.argv.slice(2);
const client = celery.createClient(url, url);
const terminal = new Set(["succeeded", "failed", "cancelled"]);

async function main() {
  const { run_id } = await client.createTask("legato.submit")
    .applyAsync([], { pipeline, input: JSON.parse(input) }).get(30000);
  for (let i = 0; i < 120; i++) {
    const run = await client.createTask("legato.status").applyAsync([], { run_id }).get(30000);
    if (terminal.has(run.status)) return run;
    await new Promise((done) => setTimeout(done, 250));
  }
  throw new Error(`run ${run_id} did not end`);
}

main().then(
  (run) => { console.log(JSON.stringify(run)); process.exit(0); },
  (err) => { console.error(String(err)); process.exit(1); },
);
