using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Metrics;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Causal.Metrics;

/// <summary>
/// The numbers a sweep reads back, gathered where the logits live. On the CPU each metric value is computed at once
/// and every forward pass checks its own logits, as a plain run does. On a device each
/// value of an <see cref="IDeviceMetric"/> is written into a slot there, each pass's finiteness is folded into a slot
/// there (0, or NaN when any logit is NaN or ±∞), and <see cref="Read"/> copies every slot back as one table; a pass
/// whose slot is not finite is then run again with the model's own check, which names the hook point where the values
/// went bad. Metrics without a device form read the logits on the host (one counted copy each).
/// </summary>
sealed class SweepReadout
{
    const int SlotsPerBlock = 256;

    readonly HookedTransformer _model;
    readonly IComputeBackend _backend;
    readonly bool _onDevice;
    readonly List<double> _hostValues = [];
    readonly List<int> _valueSlots = [];
    readonly List<(int Slot, Action Rerun)> _passes = [];
    readonly List<Tensor> _blocks = [];
    int _slots;
    double[]? _values;

    public SweepReadout(HookedTransformer model)
    {
        _model = model;
        _backend = model.Backend;
        _onDevice = !_backend.Device.IsCpu;
    }

    /// <summary>A forward pass; on a device its finiteness check waits for <see cref="Read"/>.</summary>
    public ForwardResult Run(TokenBatch tokens, RunOptions options)
    {
        CheckOpen();
        if (!_onDevice) return _model.Run(tokens, options);
        options.DeferFiniteCheck = true;
        var result = _model.Run(tokens, options);
        int slot = NextSlot(out var flag);
        FiniteFlag(result.Logits, flag);
        _passes.Add((slot, () =>
        {
            options.DeferFiniteCheck = false;
            _model.Run(tokens, options);
        }));
        return result;
    }

    /// <summary>The metric on <paramref name="logits"/>: the index of its value in what <see cref="Read"/> returns.</summary>
    public int Value(IMetric metric, Tensor logits)
    {
        CheckOpen();
        int index = _hostValues.Count;
        if (_onDevice && !logits.IsHost && metric is IDeviceMetric onDevice)
        {
            _valueSlots.Add(NextSlot(out var value));
            onDevice.WriteValue(logits, _backend, value);
            _hostValues.Add(double.NaN);
        }
        else
        {
            _valueSlots.Add(-1);
            _hostValues.Add(MetricValue.Of(metric, logits, _backend));
        }
        return index;
    }

    /// <summary>Every value, by the indices <see cref="Value"/> gave; on a device, one copy back of every slot.</summary>
    /// <exception cref="InputError">A pass's logits were not finite (the model's message names where they went bad).</exception>
    public double[] Read()
    {
        if (_values is not null) return _values;
        var values = _hostValues.ToArray();
        if (_slots > 0)
        {
            var table = _backend.Empty(_slots);
            for (int b = 0; b < _blocks.Count; b++)
            {
                int used = Math.Min(SlotsPerBlock, _slots - b * SlotsPerBlock);
                _backend.CopyRows(_blocks[b], 0, 0, table, (long)b * SlotsPerBlock, 0, 1, used);
            }
            var host = table.ToCpu().Span;
            for (int i = 0; i < values.Length; i++)
                if (_valueSlots[i] >= 0) values[i] = host[_valueSlots[i]];
            // The re-run throws the model's error naming the hook point; a re-run that passes means the flag's sum
            // overflowed on finite logits, and the values stand.
            foreach (var (slot, rerun) in _passes)
                if (!float.IsFinite(host[slot])) rerun();
        }
        return _values = values;
    }

    void CheckOpen()
    {
        if (_values is not null) throw new InvalidOperationException("this sweep's values were already read back");
    }

    int NextSlot(out Tensor slot)
    {
        int index = _slots++;
        if (index % SlotsPerBlock == 0) _blocks.Add(_backend.Empty(SlotsPerBlock));
        slot = new Tensor(_blocks[^1].Storage.Slice(index % SlotsPerBlock, 1), 1);
        return index;
    }

    /// <summary><c>flag[0] = 0 · Σ logits</c>: 0 when every logit is finite, NaN when one is NaN or ±∞ (0 · ∞ is NaN).</summary>
    void FiniteFlag(Tensor logits, Tensor flag)
    {
        int n = logits.Dim(logits.Rank - 1), rows = logits.Length / n;
        var partial = _backend.Empty(n);
        _backend.SumMiddleAxis(logits, 1, rows, n, partial);
        _backend.Scale(partial, 0f, partial);
        _backend.SumMiddleAxis(partial, 1, n, 1, flag);
    }
}
