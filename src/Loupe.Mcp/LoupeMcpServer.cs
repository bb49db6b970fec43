using System.Net;
using Loupe.Models;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using ModelContextProtocol.Protocol;

namespace Loupe.Mcp;

/// <summary>
/// Serves <see cref="LoupeTools"/> over the Model Context Protocol: stdio (what MCP clients launch), any pair of
/// streams (tests, pipes), or streamable HTTP on a loopback port. Logs go to stderr: stdout is the protocol.
/// </summary>
public static class LoupeMcpServer
{
    /// <summary>The server's name and version as MCP clients see them.</summary>
    public static Implementation Info { get; } = new()
    {
        Name = "loupe",
        Version = typeof(LoupeMcpServer).Assembly.GetName().Version?.ToString(3) ?? "0.0.0",
    };

    /// <summary>The tools over a model and the served artifacts; <paramref name="explainer"/> enables <c>explain_feature</c>.</summary>
    public static LoupeTools Tools(HookedTransformer model, McpArtifacts artifacts, McpExplainer? explainer = null) => new(model, artifacts, explainer);

    /// <summary>Serves over stdin/stdout until the client closes stdin or <paramref name="cancellation"/> fires.</summary>
    public static Task RunStdioAsync(LoupeTools tools, CancellationToken cancellation = default)
    {
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { Args = [], DisableDefaults = true });
        LogToStderr(builder.Logging);
        Configure(builder.Services, tools).WithStdioServerTransport();
        return builder.Build().RunAsync(cancellation);
    }

    /// <summary>
    /// Serves over a pair of streams (the client writes <paramref name="input"/> and reads <paramref name="output"/>);
    /// <paramref name="minimumLogLevel"/> quiets the SDK's log of every refused call where many are expected (fuzzing).
    /// </summary>
    public static Task RunStreamsAsync(LoupeTools tools, Stream input, Stream output, CancellationToken cancellation = default, LogLevel minimumLogLevel = LogLevel.Warning)
    {
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { Args = [], DisableDefaults = true });
        LogToStderr(builder.Logging, minimumLogLevel);
        Configure(builder.Services, tools).WithStreamServerTransport(input, output);
        return builder.Build().RunAsync(cancellation);
    }

    /// <summary>
    /// A web app serving MCP's streamable HTTP transport at <c>http://127.0.0.1:{port}/</c> — loopback only, since the
    /// tools run a model on this machine for whoever connects. Start it with <c>RunAsync</c> or <c>StartAsync</c>.
    /// </summary>
    public static WebApplication Http(LoupeTools tools, int port)
    {
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions { Args = [] });
        LogToStderr(builder.Logging);
        builder.WebHost.ConfigureKestrel(k => k.Listen(IPAddress.Loopback, port));
        Configure(builder.Services, tools).WithHttpTransport();
        var app = builder.Build();
        app.MapMcp();
        return app;
    }

    /// <summary>The server, its tools, and the argument check every tool call passes first (<see cref="ToolArguments"/>).</summary>
    static IMcpServerBuilder Configure(IServiceCollection services, LoupeTools tools) =>
        services.AddMcpServer(o => o.ServerInfo = Info).WithTools(tools).WithRequestFilters(f => f.AddCallToolFilter(ToolArguments.Filter));

    static void LogToStderr(ILoggingBuilder logging, LogLevel minimumLevel = LogLevel.Warning)
    {
        logging.ClearProviders();
        logging.AddConsole(o => o.LogToStandardErrorThreshold = LogLevel.Trace);
        logging.SetMinimumLevel(minimumLevel);
    }
}
