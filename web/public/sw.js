// Offline support. Same-origin GETs go to the network when possible (and are cached), and to the cache when
// the network is gone. The page asks, once the worker runs, for everything its first visit loaded to be
// cached ("cache-urls"), and is told when that is done.
const CACHE = "cifarkit-v1";

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("message", (event) => {
  if (event.data?.type !== "cache-urls") return;
  const reply = (answer) => event.ports[0]?.postMessage(answer);
  event.waitUntil(
    caches
      .open(CACHE)
      // one by one: a missing optional file (the sample gallery) must not spoil the rest
      .then((cache) => Promise.all([...new Set(event.data.urls)].map((url) => cache.add(url).catch(() => null))))
      .then(() => reply("done"), (error) => reply(`failed: ${error}`)),
  );
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET" || new URL(request.url).origin !== self.location.origin) return;
  event.respondWith(
    fetch(request)
      .then((response) => {
        if (response.ok) {
          const copy = response.clone();
          event.waitUntil(caches.open(CACHE).then((cache) => cache.put(request, copy)));
        }
        return response;
      })
      .catch(() => caches.match(request, { ignoreVary: true }).then((cached) => cached || Response.error())),
  );
});
