// Microphone capture for the chains voice page (an AudioWorklet: runs on the audio thread).
//
// Takes the context's float samples (usually 48 kHz), resamples them to the rate the
// page declared in `start` (linear interpolation, phase kept across blocks), converts
// to PCM16 and posts one 20 ms frame at a time, with the frame's RMS level so the
// page can notice the user talking over the reply.

class PcmCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    this.target = o.targetRate || 16000;
    this.step = sampleRate / this.target; // input samples per output sample
    this.frameLen = Math.round((this.target * (o.frameMs || 20)) / 1000);
    this.frame = new Int16Array(this.frameLen);
    this.fill = 0;
    this.pos = 0; // position of the next output sample, relative to `last`
    this.last = 0;
    this.sumSq = 0;
  }

  push(x) {
    const v = Math.max(-1, Math.min(1, x));
    this.frame[this.fill++] = v < 0 ? v * 0x8000 : v * 0x7fff;
    this.sumSq += v * v;
    if (this.fill === this.frameLen) {
      const rms = Math.sqrt(this.sumSq / this.frameLen);
      const out = this.frame;
      this.port.postMessage({ pcm: out.buffer, rms }, [out.buffer]);
      this.frame = new Int16Array(this.frameLen);
      this.fill = 0;
      this.sumSq = 0;
    }
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    const ch = input[0];
    if (this.step === 1) {
      for (let i = 0; i < ch.length; i++) this.push(ch[i]);
      return true;
    }
    // samples: index -1 is `last` (previous block's final sample), 0..n-1 this block
    let pos = this.pos;
    const n = ch.length;
    while (pos < n - 1) {
      const i = Math.floor(pos);
      const frac = pos - i;
      const a = i < 0 ? this.last : ch[i];
      const b = ch[i + 1];
      this.push(a + (b - a) * frac);
      pos += this.step;
    }
    this.pos = pos - n; // relative to the next block, where `last` is index -1
    this.last = ch[n - 1];
    return true;
  }
}

registerProcessor("pcm-capture", PcmCapture);
