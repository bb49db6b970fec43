using Loupe.Dictionaries.Features;
using Microsoft.Data.Sqlite;

namespace Loupe.Explain;

/// <summary>
/// Writes explanations, scores and costs into a feature store's explanation tables (created when missing; the
/// rest of the store is untouched). Each feature is one transaction: a killed run leaves every feature either
/// complete or absent. Thread-safe.
/// </summary>
public sealed class ExplanationWriter : IDisposable
{
    readonly SqliteConnection _db;
    readonly Lock _lock = new();

    /// <exception cref="InputError">The file cannot be opened for writing or is not a feature store.</exception>
    public ExplanationWriter(string storePath)
    {
        using (FeatureStore.Open(storePath)) { } // refuses anything that is not a readable feature store
        Path = System.IO.Path.GetFullPath(storePath);
        _db = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = Path, Mode = SqliteOpenMode.ReadWrite, Pooling = false, DefaultTimeout = 30 }.ToString());
        try
        {
            _db.Open();
            Exec(FeatureStoreSchema.CreateExplanationTables);
        }
        catch (SqliteException e)
        {
            _db.Dispose();
            throw new IOException($"{Path}: cannot add explanation tables to the feature store ({e.Message.ReplaceLineEndings(" ").TrimEnd('.')})", e);
        }
    }

    public string Path { get; }

    void Exec(string sql)
    {
        using var cmd = _db.CreateCommand();
        cmd.CommandText = sql;
        cmd.ExecuteNonQuery();
    }

    /// <summary>
    /// Whether the feature already has an explanation by <paramref name="model"/> and metrics from every scorer in
    /// <paramref name="scorers"/> — those that use non-activating examples made with the same choice of them
    /// (<paramref name="similarNegatives"/>: recorded as their <c>similar_negatives</c> metric).
    /// </summary>
    public bool IsDone(int feature, string model, IReadOnlyCollection<string> scorers, bool similarNegatives = false)
    {
        lock (_lock)
        {
            using var cmd = _db.CreateCommand();
            cmd.CommandText = """
                SELECT (SELECT COUNT(*) FROM explanations WHERE feature = $f AND explainer_model = $m),
                       (SELECT COUNT(DISTINCT s.scorer) FROM explanation_scores s
                        WHERE s.feature = $f AND s.explainer_model = $m AND s.scorer IN (SELECT value FROM json_each($s))
                          AND (s.scorer NOT IN (SELECT value FROM json_each($n))
                               OR EXISTS (SELECT 1 FROM explanation_scores t WHERE t.feature = s.feature AND t.explainer_model = s.explainer_model
                                          AND t.scorer = s.scorer AND t.metric = 'similar_negatives') = $similar))
                """;
            cmd.Parameters.AddWithValue("$f", feature);
            cmd.Parameters.AddWithValue("$m", model);
            cmd.Parameters.AddWithValue("$s", System.Text.Json.JsonSerializer.Serialize(scorers));
            cmd.Parameters.AddWithValue("$n", System.Text.Json.JsonSerializer.Serialize(ExplainOptions.UsesNegatives));
            cmd.Parameters.AddWithValue("$similar", similarNegatives ? 1 : 0);
            using var r = cmd.ExecuteReader();
            r.Read();
            return r.GetInt64(0) > 0 && r.GetInt64(1) == scorers.Count;
        }
    }

    /// <summary>Stores one feature's result, replacing any earlier one by the same model, in one transaction.</summary>
    public void Save(FeatureOutcome outcome, string model)
    {
        lock (_lock)
        {
            using var tx = _db.BeginTransaction();
            void Run(string sql, params (string, object?)[] args)
            {
                using var cmd = _db.CreateCommand();
                cmd.Transaction = tx;
                cmd.CommandText = sql;
                foreach (var (n, v) in args) cmd.Parameters.AddWithValue(n, v ?? DBNull.Value);
                cmd.ExecuteNonQuery();
            }
            Run("DELETE FROM explanation_scores WHERE feature = $f AND explainer_model = $m", ("$f", outcome.Feature), ("$m", model));
            Run("INSERT OR REPLACE INTO explanations (feature, explainer_model, text, created) VALUES ($f, $m, $t, $c)",
                ("$f", outcome.Feature), ("$m", model), ("$t", outcome.Explanation), ("$c", DateTimeOffset.UtcNow.ToString("O")));
            var rows = outcome.Scores.SelectMany(kv => kv.Value.Values().Select(v => (Scorer: kv.Key, v.Metric, v.Value)));
            if (outcome.Simulation is { } simulation) rows = rows.Concat(simulation.Values().Select(v => (Scorer: ExplainOptions.Simulation, v.Metric, v.Value)));
            if (outcome.SimilarNegatives)
                rows = rows.Concat(outcome.Scores.Keys.Append(outcome.Simulation is null ? null : ExplainOptions.Simulation).OfType<string>()
                    .Where(ExplainOptions.UsesNegatives.Contains).Select(scorer => (Scorer: scorer, Metric: "similar_negatives", Value: 1.0)));
            foreach (var (scorer, metric, value) in rows)
                Run("INSERT INTO explanation_scores (feature, explainer_model, scorer, metric, value) VALUES ($f, $m, $s, $k, $v)",
                    ("$f", outcome.Feature), ("$m", model), ("$s", scorer), ("$k", metric), ("$v", value));
            Run("INSERT OR REPLACE INTO explanation_costs (feature, explainer_model, requests, prompt_tokens, completion_tokens, cost_usd) VALUES ($f, $m, $r, $p, $c, $d)",
                ("$f", outcome.Feature), ("$m", model), ("$r", outcome.Usage.Requests), ("$p", outcome.Usage.PromptTokens), ("$c", outcome.Usage.CompletionTokens), ("$d", outcome.Usage.CostUsd));
            tx.Commit();
        }
    }

    /// <summary>Totals over every stored feature of <paramref name="model"/>: features, requests, tokens and cost (null when any feature's cost is unknown).</summary>
    public (int Features, Usage Usage) Totals(string model)
    {
        lock (_lock)
        {
            using var cmd = _db.CreateCommand();
            cmd.CommandText = "SELECT COUNT(*), COALESCE(SUM(requests), 0), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0), SUM(cost_usd), COUNT(cost_usd) FROM explanation_costs WHERE explainer_model = $m";
            cmd.Parameters.AddWithValue("$m", model);
            using var r = cmd.ExecuteReader();
            r.Read();
            int n = r.GetInt32(0);
            double? cost = n > 0 && r.GetInt64(5) == n ? r.GetDouble(4) : n == 0 ? 0 : null;
            return (n, new Usage(r.GetInt32(1), r.GetInt64(2), r.GetInt64(3), cost));
        }
    }

    public void Dispose() => _db.Dispose();
}
