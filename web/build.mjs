// Bundles src/ into dist/: hashed JS and CSS under dist/assets/ and an index.html that names them.
import { createHash } from "node:crypto";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const root = dirname(fileURLToPath(import.meta.url));
const out = join(root, "dist");
const watch = process.argv.includes("--watch");

const options = {
  absWorkingDir: root,
  entryPoints: { app: "src/main.ts" },
  bundle: true,
  format: "esm",
  target: ["es2022"],
  minify: !watch,
  sourcemap: watch ? "inline" : false,
  legalComments: "linked",
  entryNames: "[name]-[hash]",
  assetNames: "[name]-[hash]",
  outdir: join(out, "assets"),
  metafile: true,
  logLevel: "warning",
  loader: { ".svg": "file", ".woff2": "file", ".woff": "file" },
  define: { "process.env.NODE_ENV": watch ? '"development"' : '"production"' },
};

async function writeIndex(result) {
  const outputs = Object.keys(result.metafile.outputs).map((p) => p.replace(/\\/g, "/"));
  const pick = (ext) => {
    const found = outputs.find((p) => p.includes("/assets/app-") && p.endsWith(ext));
    if (!found) throw new Error(`no ${ext} bundle was produced`);
    return "assets/" + found.split("/assets/")[1];
  };
  const icon = await readFile(join(root, "src", "icon.svg"));
  const iconName = `icon-${createHash("sha256").update(icon).digest("hex").slice(0, 8)}.svg`;
  await writeFile(join(out, "assets", iconName), icon);
  const template = await readFile(join(root, "src", "index.html"), "utf8");
  const html = template
    .replace("%APP_JS%", pick(".js"))
    .replace("%APP_CSS%", pick(".css"))
    .replace("%ICON%", `assets/${iconName}`);
  await writeFile(join(out, "index.html"), html);
}

await rm(out, { recursive: true, force: true });
await mkdir(join(out, "assets"), { recursive: true });
if (watch) {
  const context = await esbuild.context({
    ...options,
    plugins: [{ name: "index", setup: (b) => b.onEnd((r) => r.errors.length || writeIndex(r)) }],
  });
  await context.watch();
  console.log("watching web/src for changes");
} else {
  const result = await esbuild.build(options);
  await writeIndex(result);
  const bytes = Object.values(result.metafile.outputs).reduce((n, o) => n + o.bytes, 0);
  console.log(`web/dist built (${(bytes / 1024).toFixed(0)} KiB)`);
}
