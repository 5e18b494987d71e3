// Builds the studio page: precompiles the Adaptive Card 1.4 JSON schema into a standalone
// validator (the page's CSP has no 'unsafe-eval', so Ajv cannot compile in the browser), then
// bundles and minifies src/main.js and src/studio.css with esbuild into src/studio/assets/.
import { build } from "esbuild";
import Ajv from "ajv";
import standaloneCode from "ajv/dist/standalone/index.js";
import { mkdirSync, readFileSync, writeFileSync, copyFileSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const draft06 = createRequire(import.meta.url)("ajv/dist/refs/json-schema-draft-06.json");

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..");
const assets = join(root, "src", "studio", "assets");
const dev = process.argv.includes("--dev");

// 1. The card schema, as code.
const schema = JSON.parse(readFileSync(join(root, "tests", "schemas", "adaptive-card-1.4.json"), "utf8"));
// Draft-06 names the schema with "$id"; the file still says "id" (draft-04), which Ajv refuses.
if (schema.id && !schema.$id) {
  schema.$id = schema.id;
  delete schema.id;
}
const ajv = new Ajv({
  allErrors: true,
  strict: false, // the schema has documentation keywords Ajv does not know ("version", "examples")
  code: { source: true, esm: true, lines: false },
});
ajv.addMetaSchema(draft06);
// The formats the schema uses: "uri" (an absolute URI: scheme, colon, no spaces) and
// "uri-reference" (no spaces).
ajv.addFormat("uri", /^[a-z][a-z0-9+.-]*:[^\s]*$/i);
ajv.addFormat("uri-reference", /^[^\s]*$/);
// The whole card ("card"), and each typed definition (an element or an action, whose
// `"type": {"enum": [name]}` names it) by that name: the page checks an element against its own
// type's definition to say what is wrong with it, rather than what each other type would want.
ajv.addSchema(schema);
const typed = Object.entries(schema.definitions)
  .filter(([name, d]) => Array.isArray(d.properties?.type?.enum) && d.properties.type.enum.includes(name))
  .map(([name]) => name);
const exports = { card: schema.$id };
const exportName = (name) => `t_${name.replace(/\W/g, "_")}`; // "Action.OpenUrl" → t_Action_OpenUrl
for (const name of typed) exports[exportName(name)] = `${schema.$id}#/definitions/${name}`;
mkdirSync(join(here, "src", "gen"), { recursive: true });
writeFileSync(
  join(here, "src", "gen", "validate-card.js"),
  standaloneCode(ajv, exports) +
    `\nexport const typed = ${JSON.stringify(Object.fromEntries(typed.map((n) => [n, exportName(n)])))};\n`,
);

// 2. The bundles.
mkdirSync(assets, { recursive: true });
const common = { bundle: true, minify: !dev, sourcemap: false, legalComments: "none", logLevel: "warning" };
await build({
  ...common,
  entryPoints: [join(here, "src", "main.js")],
  outfile: join(assets, "studio.js"),
  format: "iife",
  target: ["es2020"],
  define: { "process.env.NODE_ENV": '"production"' },
});
await build({ ...common, entryPoints: [join(here, "src", "studio.css")], outfile: join(assets, "studio.css") });
copyFileSync(join(here, "index.html"), join(assets, "index.html"));

for (const f of ["index.html", "studio.js", "studio.css"]) {
  console.log(`${f.padEnd(11)} ${(statSync(join(assets, f)).size / 1024).toFixed(1).padStart(7)} KiB`);
}
