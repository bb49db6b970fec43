using System.Diagnostics;

namespace Loupe.Fuzz.Engine;

/// <summary>Runs one input on its own thread under a time limit and classifies what happened.</summary>
public static class Executor
{
    /// <summary>
    /// Runs <paramref name="action"/>; past <paramref name="timeout"/> the input is a hang and the thread is
    /// abandoned (it cannot be stopped): the caller stops the campaign, and the console runner's child process exits.
    /// </summary>
    public static Outcome Run(Action action, TimeSpan timeout)
    {
        Exception? error = null;
        using var done = new ManualResetEventSlim();
        var thread = new Thread(() =>
        {
            try { action(); }
            catch (Exception e) { error = e; }
            finally { done.Set(); }
        })
        { IsBackground = true, Name = "loupe-fuzz-input" };
        thread.Start();
        if (!done.Wait(timeout))
            return new Outcome(Verdict.Failed, "hang", "", $"no result after {timeout.TotalSeconds:0.#} s");
        return error is null ? Outcome.Accepted : Classify(error);
    }

    /// <summary>InputError and file-system errors are refusals; anything else (EndOfStreamException included: a missing length check) is a failure.</summary>
    public static Outcome Classify(Exception e)
    {
        if (e is OracleViolation v) return new Outcome(Verdict.Failed, v.Kind, "", OneLine(v.Message));
        bool refused = e switch
        {
            InputError => true,
            EndOfStreamException => false,
            IOException or UnauthorizedAccessException => true,
            _ => false,
        };
        if (refused) return new Outcome(Verdict.Refused, "", e.GetType().FullName!, OneLine(e.Message));
        return new Outcome(Verdict.Failed, "exception", e.GetType().FullName!, OneLine(e.Message), TopLoupeFrame(e), StackHead(e));
    }

    static string OneLine(string s)
    {
        s = s.ReplaceLineEndings(" ");
        return s.Length > 300 ? s[..300] + "…" : s;
    }

    /// <summary>The first frame in Loupe's own code (not the harness), else the first frame.</summary>
    public static string TopLoupeFrame(Exception e)
    {
        var frames = new StackTrace(e, false).GetFrames();
        string Name(StackFrame f) => f.GetMethod() is { } m ? $"{m.DeclaringType?.FullName}.{m.Name}" : "?";
        foreach (var f in frames)
        {
            var type = f.GetMethod()?.DeclaringType?.FullName ?? "";
            if (type.StartsWith("Loupe.", StringComparison.Ordinal) && !type.StartsWith("Loupe.Fuzz", StringComparison.Ordinal)) return Name(f);
        }
        return frames.Length > 0 ? Name(frames[0]) : "?";
    }

    static string StackHead(Exception e)
    {
        var lines = (e.StackTrace ?? "").Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var head = string.Join(" | ", lines.Take(6));
        return e.InnerException is { } inner ? $"{head} | inner {inner.GetType().FullName}: {OneLine(inner.Message)}" : head;
    }
}
