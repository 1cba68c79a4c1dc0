// Validates shipped files against published schemas, for test-harness/tests/deploy.rs.
//
//   node validate.mjs k8s FILE...            Kubernetes objects: Istio's CRD schemas
//                                            (@kubernetes-models/istio) and Kubernetes'
//                                            OpenAPI schemas (kubernetes-models), the
//                                            Prometheus Operator's (PrometheusRule)
//   node validate.mjs schema SCHEMA FILE...  JSON files against a JSON Schema (ajv)
//
// The packages live in NHI_NODE_MODULES (default: <repo>/.tools/node/node_modules,
// installed by `make node-tools` from this directory's package-lock.json).
//
// CRD schemas accept unknown members (Kubernetes prunes them silently), so `k8s` also
// refuses keys the schema does not know: each key is replaced by a value of no valid
// type, and a key whose replacement the schema does not complain about is unknown.
// Free-form members (a WasmPlugin's pluginConfig, an EnvoyFilter's patch value) are
// not searched: `nhi-guard check` and `envoy --mode validate` check those.
//
// Output: one JSON line per document: {file, doc, kind, name, status, errors}, status
// "ok", "invalid" or "no-schema". Exit status 1 if anything is invalid.

import { readFileSync, existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const modules = resolve(process.env.NHI_NODE_MODULES ?? join(here, "..", "..", ".tools", "node", "node_modules"));
if (!existsSync(modules)) {
  console.error(`no ${modules}: run \`make node-tools\` (or set NHI_NODE_MODULES)`);
  process.exit(2);
}
const require = createRequire(join(modules, "_"));
const YAML = require("yaml");

// Where a document's free-form members start (JSON pointers, as regexes).
const FREE_FORM = {
  WasmPlugin: [/^\/spec\/pluginConfig\//],
  EnvoyFilter: [/^\/spec\/configPatches\/\d+\/patch\/value\//],
};

const SENTINEL = Symbol("no valid type");

async function modelFor(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  const candidates = group
    ? ["@kubernetes-models/istio", "@kubernetes-models/prometheus-operator", "kubernetes-models"].map((pkg) =>
        join(modules, pkg, group, version, `${kind}.js`),
      )
    : [join(modules, "kubernetes-models", version, `${kind}.js`)];
  for (const file of candidates) {
    if (existsSync(file)) {
      const module = await import(pathToFileURL(file).href);
      return module[kind];
    }
  }
  return null;
}

function errorsOf(Model, doc) {
  try {
    new Model(doc).validate();
    return [];
  } catch (err) {
    return err.errors ?? [{ instancePath: "", message: err.message }];
  }
}

const pointer = (keys) => keys.map((k) => "/" + String(k).replace(/~/g, "~0").replace(/\//g, "~1")).join("");

function setAt(root, keys, value) {
  let node = root;
  for (const key of keys.slice(0, -1)) node = node[key];
  node[keys[keys.length - 1]] = value;
}

function unknownKeys(Model, doc, kind) {
  const freeForm = FREE_FORM[kind] ?? [];
  const unknown = [];
  const walk = (value, keys) => {
    if (Array.isArray(value)) {
      value.forEach((item, i) => walk(item, [...keys, i]));
      return;
    }
    if (value === null || typeof value !== "object") return;
    for (const key of Object.keys(value)) {
      const path = pointer([...keys, key]);
      if (freeForm.some((re) => re.test(path))) continue;
      const probe = JSON.parse(JSON.stringify(doc));
      setAt(probe, [...keys, key], SENTINEL);
      const known = errorsOf(Model, probe).some((e) => e.instancePath === path || e.instancePath.startsWith(path + "/"));
      if (!known) {
        unknown.push({ instancePath: path, message: "is not a member the schema knows" });
        continue;
      }
      walk(value[key], [...keys, key]);
    }
  };
  walk(doc, []);
  return unknown;
}

async function k8s(files) {
  let failed = false;
  for (const file of files) {
    const docs = YAML.parseAllDocuments(readFileSync(file, "utf8"));
    let index = 0;
    for (const parsed of docs) {
      index += 1;
      if (parsed.errors.length > 0) {
        failed = true;
        console.log(JSON.stringify({ file, doc: index, status: "invalid", errors: parsed.errors.map((e) => e.message) }));
        continue;
      }
      const doc = parsed.toJS();
      if (doc === null || doc === undefined) continue;
      const { apiVersion, kind } = doc;
      const name = doc.metadata?.name ?? null;
      const line = { file, doc: index, apiVersion, kind, name };
      const Model = apiVersion && kind ? await modelFor(apiVersion, kind) : null;
      if (!Model) {
        console.log(JSON.stringify({ ...line, status: "no-schema", errors: [] }));
        continue;
      }
      const errors = [...errorsOf(Model, doc), ...unknownKeys(Model, doc, kind)].map(
        (e) => `${e.instancePath || "/"}: ${e.message}${e.params?.allowedValues ? ` (${e.params.allowedValues.join(", ")})` : ""}`,
      );
      failed ||= errors.length > 0;
      console.log(JSON.stringify({ ...line, status: errors.length ? "invalid" : "ok", errors }));
    }
  }
  return failed;
}

function schema(schemaFile, files) {
  const Ajv = require("ajv");
  const ajv = new Ajv({ allErrors: true, strict: false, validateFormats: false });
  const validate = ajv.compile(JSON.parse(readFileSync(schemaFile, "utf8")));
  let failed = false;
  for (const file of files) {
    const ok = validate(JSON.parse(readFileSync(file, "utf8")));
    const errors = ok ? [] : validate.errors.map((e) => `${e.instancePath || "/"}: ${e.message} ${JSON.stringify(e.params)}`);
    failed ||= !ok;
    console.log(JSON.stringify({ file, status: ok ? "ok" : "invalid", errors }));
  }
  return failed;
}

const [mode, ...args] = process.argv.slice(2);
let failed;
if (mode === "k8s" && args.length > 0) failed = await k8s(args);
else if (mode === "schema" && args.length > 1) failed = schema(args[0], args.slice(1));
else {
  console.error("usage: node validate.mjs k8s FILE... | node validate.mjs schema SCHEMA FILE...");
  process.exit(2);
}
process.exit(failed ? 1 : 0);
