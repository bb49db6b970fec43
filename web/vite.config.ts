import { defineConfig } from "vite";

// The server embeds what this writes (src/Loupe.Serve/wwwroot); nothing is fetched from a CDN at run time.
export default defineConfig({
  base: "/",
  build: {
    outDir: "../src/Loupe.Serve/wwwroot",
    emptyOutDir: true,
    // No inline <script> or <style>: the server's CSP is default-src 'self'.
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    target: "es2022",
  },
  server: { proxy: { "/api": "http://127.0.0.1:8765" } },
});
