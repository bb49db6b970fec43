using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Xunit.Abstractions;

namespace Loupe.Serve.Tests;

public class SecurityTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Loopback_by_default_without_a_token()
    {
        await using var host = await Servers.StartAsync(Servers.Gpt2);
        Assert.True(host.Options.IsLoopback);
        Assert.Null(host.Token);
        Assert.True(IPAddress.IsLoopback(IPAddress.Parse(host.Url!.Host)));
    }

    [Fact]
    public async Task Beyond_loopback_every_request_needs_the_token()
    {
        // No --token: one is generated, and nothing is answered without it.
        await using var host = await Servers.StartAsync(Servers.Gpt2, new ServeOptions { Host = "0.0.0.0" });
        Assert.NotNull(host.Token);
        Assert.True(host.Token!.Length >= 32);
        using var anonymous = Servers.Client(host);
        int refused = 0;
        foreach (var path in new[] { "/", "/prompt", "/api/model", "/api/openapi.json", "/api/artifacts", "/assets/x.js" })
        {
            var r = await anonymous.GetAsync(path);
            Assert.Equal(HttpStatusCode.Unauthorized, r.StatusCode);
            refused++;
        }
        Assert.Equal(HttpStatusCode.Unauthorized, (await anonymous.PostAsync("/api/prompt", Json(new { tokens = new[] { 1, 2 } }))).StatusCode);
        using var wrong = Servers.Client(host, new string('0', host.Token.Length));
        Assert.Equal(HttpStatusCode.Unauthorized, (await wrong.GetAsync("/api/model")).StatusCode);

        using var bearer = Servers.Client(host, host.Token);
        Assert.Equal(HttpStatusCode.OK, (await bearer.GetAsync("/api/model")).StatusCode);

        // First visit with ?token=: a cookie is set and the token leaves the URL.
        var visit = await anonymous.GetAsync($"/prompt?text=hi&token={host.Token}");
        Assert.Equal(HttpStatusCode.Redirect, visit.StatusCode);
        Assert.Equal("/prompt?text=hi", visit.Headers.Location!.OriginalString);
        string cookie = visit.Headers.GetValues("Set-Cookie").Single();
        Assert.Contains("httponly", cookie, StringComparison.OrdinalIgnoreCase);
        Assert.Contains("samesite=strict", cookie, StringComparison.OrdinalIgnoreCase);
        var withCookie = new HttpRequestMessage(HttpMethod.Get, "/api/model");
        withCookie.Headers.Add("Cookie", cookie.Split(';')[0]);
        Assert.Equal(HttpStatusCode.OK, (await anonymous.SendAsync(withCookie)).StatusCode);
        output.WriteLine($"non-loopback bind without the token: {refused + 2} of {refused + 2} requests answered 401");
    }

    [Fact]
    public async Task A_chosen_token_is_checked_on_loopback_too()
    {
        await using var host = await Servers.StartAsync(Servers.Gpt2, new ServeOptions { Token = "a-long-enough-test-token" });
        using var anonymous = Servers.Client(host);
        using var bearer = Servers.Client(host, "a-long-enough-test-token");
        Assert.Equal(HttpStatusCode.Unauthorized, (await anonymous.GetAsync("/api/model")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await bearer.GetAsync("/api/model")).StatusCode);
    }

    [Fact]
    public async Task Security_headers_on_every_answer_and_no_cors()
    {
        await using var host = await Servers.StartAsync(Servers.Gpt2);
        using var client = Servers.Client(host);
        foreach (var path in new[] { "/", "/api/model", "/api/nope", "/missing.js" })
        {
            var request = new HttpRequestMessage(HttpMethod.Get, path);
            request.Headers.Add("Origin", "https://evil.example");
            var r = await client.SendAsync(request);
            string csp = r.Headers.GetValues("Content-Security-Policy").Single();
            Assert.Contains("default-src 'self'", csp);
            Assert.DoesNotContain("unsafe-inline", csp);
            Assert.Equal("nosniff", r.Headers.GetValues("X-Content-Type-Options").Single());
            Assert.Equal("no-referrer", r.Headers.GetValues("Referrer-Policy").Single());
            Assert.False(r.Headers.Contains("Access-Control-Allow-Origin"));
        }
        var preflight = new HttpRequestMessage(HttpMethod.Options, "/api/prompt");
        preflight.Headers.Add("Origin", "https://evil.example");
        preflight.Headers.Add("Access-Control-Request-Method", "POST");
        Assert.False((await client.SendAsync(preflight)).Headers.Contains("Access-Control-Allow-Origin"));
    }

    [Fact]
    public async Task Path_traversal_reads_nothing()
    {
        string root = Directory.CreateTempSubdirectory("loupe-serve-graphs-").FullName;
        string outside = Directory.CreateTempSubdirectory("loupe-serve-outside-").FullName;
        const string secret = "SECRET-OUTSIDE-THE-SERVED-FOLDER";
        File.WriteAllText(Path.Combine(outside, "secret.json"), $"{{\"nodes\":[],\"links\":[],\"s\":\"{secret}\"}}");
        File.WriteAllText(Path.Combine(root, "graph.json"), "{\"nodes\":[{\"id\":\"a\"}],\"links\":[]}");
        Directory.CreateDirectory(Path.Combine(root, "sub"));
        File.WriteAllText(Path.Combine(root, "sub", "patching.json"), "{\"sweep\":[]}");
        File.CreateSymbolicLink(Path.Combine(root, "link.json"), Path.Combine(outside, "secret.json"));
        Directory.CreateSymbolicLink(Path.Combine(root, "linkdir"), outside);

        await using var host = await Servers.StartAsync(Servers.Gpt2, new ServeOptions { GraphsDir = root });
        using var client = Servers.Client(host);
        var list = JsonDocument.Parse(await client.GetStringAsync("/api/artifacts")).RootElement.EnumerateArray().ToArray();
        Assert.Equal(["graph.json", Path.Combine("sub", "patching.json")], list.Select(a => a.GetProperty("name").GetString()));
        Assert.Equal(["graph", "patching"], list.Select(a => a.GetProperty("kind").GetString()));
        string id = list[0].GetProperty("id").GetString()!;
        Assert.Contains("\"a\"", await client.GetStringAsync($"/api/artifacts/{id}"));

        string[] attempts =
        [
            "..%2F..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "..%5C..%5Cetc%5Cpasswd", "%2Fetc%2Fpasswd",
            Uri.EscapeDataString(Path.Combine(outside, "secret.json")), "link.json", "linkdir%2Fsecret.json", "graph.json",
            "sub%2Fpatching.json", "%252e%252e%252fetc%252fpasswd", "..", "%2e%2e", "....%2F%2F", id.ToUpperInvariant(), id + "%00",
        ];
        int answered = 0;
        foreach (var attempt in attempts)
        {
            var r = await client.GetAsync($"/api/artifacts/{attempt}");
            string body = await r.Content.ReadAsStringAsync();
            Assert.NotEqual(HttpStatusCode.OK, r.StatusCode);
            Assert.DoesNotContain(secret, body);
            Assert.DoesNotContain("root:", body);
            answered++;
        }
        // Raw request lines (no client-side normalization of the dots).
        foreach (var raw in new[] { "/api/artifacts/../../../etc/passwd", "/api/artifacts/..%2f..%2fetc%2fpasswd", "/../../etc/passwd", "/api/artifacts//etc/passwd" })
        {
            string response = await RawGet(host.Url!, raw);
            Assert.DoesNotContain(secret, response);
            Assert.DoesNotContain("root:", response);
            answered++;
        }
        // A file swapped for a symbolic link after the scan is refused too.
        File.Delete(Path.Combine(root, "graph.json"));
        File.CreateSymbolicLink(Path.Combine(root, "graph.json"), Path.Combine(outside, "secret.json"));
        Assert.Equal(HttpStatusCode.NotFound, (await client.GetAsync($"/api/artifacts/{id}")).StatusCode);
        output.WriteLine($"path traversal: {answered + 1} attempts, none read a file outside the served folder");
    }

    static async Task<string> RawGet(Uri url, string target)
    {
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(url.Host, url.Port);
        var stream = tcp.GetStream();
        await stream.WriteAsync(Encoding.ASCII.GetBytes($"GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"));
        using var reader = new StreamReader(stream);
        return await reader.ReadToEndAsync();
    }

    [Fact]
    public async Task Oversized_bodies_are_413()
    {
        await using var host = await Servers.StartAsync(Servers.Gpt2);
        using var client = Servers.Client(host);
        var big = new StringContent("{\"text\":\"" + new string('a', 2 << 20) + "\"}", Encoding.UTF8, "application/json");
        var r = await client.PostAsync("/api/prompt", big);
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, r.StatusCode);
        // Under the body limit but over the prompt limit: refused before tokenizing.
        var longText = await client.PostAsync("/api/prompt", Json(new { text = new string('a', 100_000) }));
        Assert.Equal(HttpStatusCode.BadRequest, longText.StatusCode);
        output.WriteLine($"a {(2 << 20) / 1024} KiB body: {(int)r.StatusCode}; a 100,000-character prompt: {(int)longText.StatusCode}");
    }

    [Fact]
    public async Task A_hundred_concurrent_clients_are_all_answered()
    {
        await using var host = await Servers.StartAsync(Servers.Gpt2, new ServeOptions { MaxQueuedModelRequests = 64 });
        const int clients = 100;
        var watch = Stopwatch.StartNew();
        var results = await Task.WhenAll(Enumerable.Range(0, clients).Select(async i =>
        {
            using var client = Servers.Client(host);
            var t = Stopwatch.StartNew();
            var r = await client.PostAsync("/api/prompt", Json(new { tokens = new[] { 1 + i % 50, 2, 3, 4, 5, 6, 7, 8 } }));
            return ((int)r.StatusCode, t.Elapsed.TotalMilliseconds);
        }));
        watch.Stop();
        var byStatus = results.GroupBy(r => r.Item1).ToDictionary(g => g.Key, g => g.Count());
        var latencies = results.Select(r => r.Item2).Order().ToArray();
        output.WriteLine($"{clients} concurrent clients, model queue bounded at 64: " + string.Join(", ", byStatus.Select(kv => $"{kv.Value} × {kv.Key}")) +
            $"; wall {watch.Elapsed.TotalMilliseconds:F0} ms, latency p50 {latencies[clients / 2]:F0} ms, max {latencies[^1]:F0} ms");
        Assert.Equal(clients, results.Length);
        Assert.All(results, r => Assert.Contains(r.Item1, new[] { 200, 503 }));
        Assert.True(byStatus.GetValueOrDefault(200) >= 64, "at least the queue's worth succeed");
        // The server is still healthy afterwards.
        using var after = Servers.Client(host);
        Assert.Equal(HttpStatusCode.OK, (await after.GetAsync("/api/model")).StatusCode);
    }

    static StringContent Json(object body) => new(JsonSerializer.Serialize(body), Encoding.UTF8, "application/json");
}
