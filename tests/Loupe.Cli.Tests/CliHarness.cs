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
            int code = Program.Build().Parse(args).Invoke(new System.CommandLine.InvocationConfiguration { Output = stdout, Error = stderr });
            return (code, stdout.ToString(), stderr.ToString());
        }
        finally
        {
            Console.SetOut(oldOut);
            Console.SetError(oldErr);
        }
    }
}
