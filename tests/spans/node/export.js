// Export a nested trace with events, typed attributes and a span link as OTLP/JSON over HTTP.
// Usage: node export.js http://127.0.0.1:PORT/v1/traces
// Prints one JSON line: the ids of what it exported, for the Python test to check.
'use strict';

const api = require('@opentelemetry/api');
const { BasicTracerProvider, SimpleSpanProcessor } = require('@opentelemetry/sdk-trace-base');
const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-http');
const { resourceFromAttributes } = require('@opentelemetry/resources');

async function main() {
  const url = process.argv[2];
  if (!url) throw new Error('usage: node export.js URL');
  const exporter = new OTLPTraceExporter({ url, timeoutMillis: 5000 });
  let failures = 0;
  const export_ = exporter.export.bind(exporter);
  exporter.export = (spans, done) => export_(spans, (result) => {
    if (result.code !== 0) failures += 1;
    done(result);
  });
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ 'service.name': 'node-shop', 'deployment.environment': 'test' }),
    spanProcessors: [new SimpleSpanProcessor(exporter)],
  });
  const tracer = provider.getTracer('tests.node', '1.0.0');

  const upstream = tracer.startSpan('orders publish', { kind: api.SpanKind.PRODUCER });
  upstream.end();

  const root = tracer.startSpan('POST /checkout', {
    kind: api.SpanKind.SERVER,
    attributes: { 'http.method': 'POST', 'http.status_code': 201, ratio: 0.5, ok: true, tags: ['a', 'b'] },
  });
  const rootCtx = api.trace.setSpan(api.ROOT_CONTEXT, root);
  root.addEvent('validated', { fields: 3 });
  const child = tracer.startSpan('charge card', {
    kind: api.SpanKind.CLIENT,
    links: [{ context: upstream.spanContext(), attributes: { 'link.kind': 'follows' } }],
  }, rootCtx);
  const leaf = tracer.startSpan('db query', { attributes: { 'db.rows': 12 } }, api.trace.setSpan(rootCtx, child));
  leaf.end();
  child.setStatus({ code: api.SpanStatusCode.ERROR, message: 'card declined' });
  child.end();
  root.setStatus({ code: api.SpanStatusCode.OK });
  root.end();

  await provider.forceFlush();
  await provider.shutdown();
  const ids = (s) => ({ traceId: s.spanContext().traceId, spanId: s.spanContext().spanId });
  console.log(JSON.stringify({ failures, upstream: ids(upstream), root: ids(root), child: ids(child), leaf: ids(leaf) }));
  if (failures) process.exit(1);
}

main().catch((err) => { console.error(err); process.exit(2); });
