// One esbuild command: each widget's entry (src/<widget>.js and .css) -> ../llmscope/static/.
// `node build.js --watch` rebuilds on save (with ANYWIDGET_HMR=1 the notebook reloads it).
import * as esbuild from "esbuild";
import { fileURLToPath } from "node:url";

const WIDGETS = ["attention_map", "ablation_panel", "raster"];
const banner = "/* Built by esbuild from widgets/src (cd widgets && npm run build); do not edit. */";

const options = {
  absWorkingDir: fileURLToPath(new URL(".", import.meta.url)),
  entryPoints: WIDGETS.flatMap((name) => [`src/${name}.js`, `src/${name}.css`]),
  outdir: "../llmscope/static",
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2022",
  charset: "utf8",
  legalComments: "none",
  banner: { js: banner, css: banner },
  // A bundle that looks for an AMD loader breaks where one exists (VS Code's notebook renderer).
  define: { define: "undefined", "define.amd": "false", require: "undefined" },
  logLevel: "warning",
};

if (process.argv.includes("--watch")) await (await esbuild.context(options)).watch();
else await esbuild.build(options);
