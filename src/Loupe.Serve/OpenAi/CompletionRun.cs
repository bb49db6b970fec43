using System.Numerics.Tensors;
using System.Text;
using Loupe.Models;
using Loupe.Models.Generation;

namespace Loupe.Serve.OpenAi;

/// <summary>A token's log-probability and the most likely alternatives at its step.</summary>
/// <param name="Token">The token's text.</param>
/// <param name="Logprob">ln p(token) under the model (before temperature).</param>
/// <param name="Top">The top alternatives, most likely first.</param>
public sealed record TokenLogprob(string Token, double Logprob, IReadOnlyList<(string Token, double Logprob)> Top);

/// <summary>One generated token as it is streamed.</summary>
/// <param name="Index">0 for the first new token.</param>
/// <param name="Id">The token id.</param>
/// <param name="Text">New text released with this token (may be empty while a stop string or a split character is pending).</param>
/// <param name="Logprob">Set when logprobs were asked for.</param>
/// <param name="Readings">Each monitor's reading, in request order.</param>
/// <param name="Crossed">Names of the monitors whose reading crossed the threshold at this token.</param>
public sealed record TokenEvent(int Index, int Id, string Text, TokenLogprob? Logprob, double[] Readings, string[] Crossed);

/// <summary>
/// One completion: generates with the request's edits and monitors, and turns every picked token into text (held back
/// while it might be the start of a stop string), log-probabilities and monitor readings.
/// </summary>
public sealed class CompletionRun(HookedTransformer model, int[] prompt, GenerationOptions generation, IReadOnlyList<string> stops,
    int? topLogprobs, LoupeRequest loupe, Action<TokenEvent>? onEvent, CancellationToken cancel)
{
    readonly List<int> _tokens = [];
    readonly List<TokenLogprob> _logprobs = [];
    string _emitted = "";
    bool _stopStringHit;

    public IReadOnlyList<int> Tokens => _tokens;
    public IReadOnlyList<TokenLogprob> Logprobs => _logprobs;
    public string Text { get; private set; } = "";
    /// <summary>stop (EOS or a stop string), length, or content_filter (a monitor with action stop).</summary>
    public string FinishReason { get; private set; } = "length";
    public string? StoppedBy { get; private set; }

    /// <summary>Runs to the end; call with the model to itself (inside the gate).</summary>
    public void Run()
    {
        var options = loupe.Options(model);
        model.Generate([prompt], generation with { OnToken = OnToken }, options);
        if (FinishReason == "length" && _tokens.Count > 0 && _tokens[^1] == model.Config.EosTokenId && generation.StopAtEos) FinishReason = "stop";
        if (!_stopStringHit)
        {
            // Release what was held back for a stop string that never came.
            string rest = Decode().Length >= _emitted.Length ? Decode()[_emitted.Length..] : "";
            Text = _emitted + rest;
            if (rest.Length > 0) onEvent?.Invoke(new TokenEvent(_tokens.Count, -1, rest, null, [], []));
        }
    }

    string Decode() => model.Tokenizer is { } t ? t.Decode([.. _tokens], skipSpecialTokens: true)
        : string.Concat(_tokens.Select(id => Analyses.Text(model, id)));

    bool OnToken(GeneratedToken step)
    {
        _tokens.Add(step.Token);
        TokenLogprob? logprob = topLogprobs is not int k ? null : step.LogitsOnDevice ? LogprobOnDevice(step, k) : Logprob(step.Logits, step.Token, k);
        if (logprob is not null) _logprobs.Add(logprob);
        var readings = new double[loupe.Monitors.Count];
        var crossed = new List<string>();
        bool stopByMonitor = false;
        for (int i = 0; i < readings.Length; i++)
        {
            var m = loupe.Monitors[i];
            if (m.Record(step.Index)) crossed.Add(m.Name);
            readings[i] = m.Latest;
            if (m.Action == MonitorAction.Stop && m.FirstCrossing == step.Index && StoppedBy is null) { StoppedBy = m.Name; stopByMonitor = true; }
        }

        string full = Decode();
        bool stopString = false;
        string release;
        int cut = FirstStop(full);
        if (cut >= 0)
        {
            full = full[..cut];
            stopString = true;
            release = full.Length >= _emitted.Length ? full[_emitted.Length..] : "";
        }
        else if (stopByMonitor || !full.StartsWith(_emitted, StringComparison.Ordinal))
            release = stopByMonitor && full.StartsWith(_emitted, StringComparison.Ordinal) ? full[_emitted.Length..] : "";
        else release = full[_emitted.Length..SafeEnd(full)];
        _emitted += release;
        Text = _emitted;
        onEvent?.Invoke(new TokenEvent(step.Index, step.Token, release, logprob, readings, [.. crossed]));
        if (stopString) { FinishReason = "stop"; _stopStringHit = true; return false; }
        if (stopByMonitor) { FinishReason = "content_filter"; return false; }
        return !cancel.IsCancellationRequested;
    }

    int FirstStop(string full)
    {
        int best = -1;
        foreach (var s in stops)
        {
            int at = full.IndexOf(s, Math.Max(0, _emitted.Length - s.Length), StringComparison.Ordinal);
            if (at >= 0 && (best < 0 || at < best)) best = at;
        }
        return best;
    }

    /// <summary>How much of <paramref name="full"/> can be released: not a tail that could begin a stop string, nor a split character.</summary>
    int SafeEnd(string full)
    {
        int end = full.Length;
        if (end > 0 && full[^1] == '\uFFFD') end--;
        foreach (var s in stops)
            for (int k = Math.Min(s.Length - 1, end); k > 0; k--)
                if (full.AsSpan(0, end).EndsWith(s.AsSpan(0, k), StringComparison.Ordinal)) { end = Math.Min(end, full.Length - k); break; }
        return Math.Max(end, _emitted.Length);
    }

    TokenLogprob Logprob(ReadOnlySpan<float> logits, int token, int k)
    {
        float max = TensorPrimitives.Max(logits);
        double sum = 0;
        foreach (float x in logits) sum += Math.Exp(x - max);
        double logZ = max + Math.Log(sum);
        var top = new List<(string, double)>();
        if (k > 0)
        {
            var order = new int[logits.Length];
            for (int i = 0; i < order.Length; i++) order[i] = i;
            var keys = logits.ToArray();
            Array.Sort(keys, order);
            for (int i = 0; i < Math.Min(k, order.Length); i++)
            {
                int id = order[order.Length - 1 - i];
                top.Add((Analyses.Text(model, id), logits[id] - logZ));
            }
        }
        return new TokenLogprob(Analyses.Text(model, token), logits[token] - logZ, top);
    }

    // On a device: log-softmax and top-k there, 2k + 1 floats back per token instead of the d_vocab logits.
    TokenLogprob LogprobOnDevice(GeneratedToken step, int k)
    {
        var (picked, ids, values) = step.LogProbabilitiesOnDevice(k);
        return new TokenLogprob(Analyses.Text(model, step.Token), picked, [.. ids.Select((id, i) => (Analyses.Text(model, id), (double)values[i]))]);
    }

    /// <summary>UTF-8 bytes of a token's text, as OpenAI's chat logprobs give them.</summary>
    public static int[] Bytes(string text) => [.. Encoding.UTF8.GetBytes(text).Select(b => (int)b)];
}
