// Validates GitHub webhook deliveries against @octokit/webhooks-schemas, set up as that package's README
// documents (ajv strict mode, ajv-formats, the custom `tsAdditionalProperties` keyword).
// stdin: a JSON array of {name, event, payload}; stdout: a JSON array of {name, schema, errors}, where
// `schema` is the definition used (`<event>$<action>`, or `<event>$event` for events without actions)
// and `errors` are ajv's (allErrors), empty when the delivery validates.
"use strict";
const Ajv = require("ajv");
const addFormats = require("ajv-formats");
const schema = require("@octokit/webhooks-schemas");

const ajv = new Ajv({ strict: true, allErrors: true });
addFormats(ajv);
ajv.addKeyword("tsAdditionalProperties");

// One definition as a root of its own (its "#/definitions/…" refs resolve against the same table):
// ajv then compiles what that event reaches, not all 300+ definitions (0.5 s instead of 5 s).
const compiled = {};
function validator(def) {
  if (!compiled[def]) {
    const root = { ...schema.definitions[def], definitions: schema.definitions };
    delete root.$schema;
    compiled[def] = ajv.compile(root);
  }
  return compiled[def];
}

function definition(event, payload) {
  const byAction = `${event}$${payload && payload.action}`;
  if (schema.definitions[byAction]) return byAction;
  if (schema.definitions[`${event}$event`]) return `${event}$event`;
  return null;
}

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => {
  const out = JSON.parse(input).map(({ name, event, payload }) => {
    const def = definition(event, payload);
    if (def === null) {
      return { name, schema: null, errors: [{ instancePath: "", message: `no schema for event ${event}` }] };
    }
    const validate = validator(def);
    const errors = validate(payload) ? [] : validate.errors.map((e) => ({
      instancePath: e.instancePath, schemaPath: e.schemaPath, message: e.message, params: e.params,
    }));
    return { name, schema: def, errors };
  });
  process.stdout.write(JSON.stringify(out));
});
