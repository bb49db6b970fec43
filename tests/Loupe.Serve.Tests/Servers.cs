using System.Net.Http.Json;
using System.Text.Json;
using Loupe.Models;
using Loupe.Testing;

namespace Loupe.Serve.Tests;

/// <summary>Real servers (Kestrel on a free port) over the test models; each model is loaded once.</summary>
static class Servers
{
    static readonly Lazy<HookedTransformer> s_gpt2 = new(() => ModelLoader.LoadFolder(SharedData.TestData("reference/gpt2")));
    static readonly Lazy<HookedTransformer> s_stories = new(() => ModelLoader.LoadFolder(SharedData.Require("models/stories260K")));

    public static HookedTransformer Gpt2 => s_gpt2.Value;
    public static HookedTransformer Stories => s_stories.Value;

    public static async Task<ServeHost> StartAsync(HookedTransformer model, ServeOptions? options = null)
    {
        var host = new ServeHost(model, (options ?? new ServeOptions()) with { Port = 0 });
        await host.StartAsync();
        return host;
    }

    public static HttpClient Client(ServeHost host, string? token = null)
    {
        var client = new HttpClient(new SocketsHttpHandler { UseCookies = false, AllowAutoRedirect = false }) { BaseAddress = host.Url, Timeout = TimeSpan.FromSeconds(120) };
        if (token is not null) client.DefaultRequestHeaders.Authorization = new("Bearer", token);
        return client;
    }

    /// <summary>GET <paramref name="path"/>, expecting <paramref name="expected"/> (the body in the failure message), as JSON.</summary>
    public static async Task<JsonElement> GetJson(HttpClient client, string path, System.Net.HttpStatusCode expected = System.Net.HttpStatusCode.OK)
    {
        var response = await client.GetAsync(path);
        string text = await response.Content.ReadAsStringAsync();
        Assert.True(response.StatusCode == expected, $"{path}: {(int)response.StatusCode} {text}");
        return JsonDocument.Parse(text).RootElement;
    }

    public static async Task<JsonElement> PostJson(HttpClient client, string path, object body)
    {
        var response = await client.PostAsJsonAsync(path, body);
        string text = await response.Content.ReadAsStringAsync();
        Assert.True(response.IsSuccessStatusCode, $"{path}: {(int)response.StatusCode} {text}");
        return JsonDocument.Parse(text).RootElement;
    }
}
