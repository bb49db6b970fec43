namespace Loupe.Cli.Tests;

/// <summary>Runs the <c>loupe</c> CLI in-process with stdout and stderr captured (tests using it share the "console" collection).</summary>
static class CliHarness
{
    public static (int Code, string Out, string Err) RunLoupe(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var (oldOut, oldErr) = (Console.Out, Console.Error);
        Console.SetOut(stdout);
        Console.SetError(stderr);
        try
        {
            int code = Program.Run(args, new System.CommandLine.InvocationConfiguration { Output = stdout, Error = stderr });
            return (code, stdout.ToString(), stderr.ToString());
        }
        finally
        {
            Console.SetOut(oldOut);
            Console.SetError(oldErr);
        }
    }

    /// <summary>
    /// Asserts a clean refusal: exit code 2, exactly one <c>error:</c> line on stderr that contains every
    /// <paramref name="expected"/> fragment, and no stack trace.
    /// </summary>
    public static void AssertRefused((int Code, string Out, string Err) result, params string[] expected)
    {
        var (code, _, err) = result;
        Assert.True(code == Commands.CliSupport.InputErrorExitCode, $"exit code {code}, stderr:\n{err}");
        Assert.DoesNotContain("   at ", err);
        var errorLines = err.Split('\n').Where(l => l.StartsWith("error: ", StringComparison.Ordinal)).ToArray();
        Assert.True(errorLines.Length == 1, $"expected one 'error:' line, stderr:\n{err}");
        foreach (var fragment in expected) Assert.Contains(fragment, errorLines[0]);
    }
}
