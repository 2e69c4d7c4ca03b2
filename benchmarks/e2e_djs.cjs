// One discord.js client of the end-to-end benchmark, in its own process (see bench_e2e.py).
//
// Run: node benchmarks/e2e_djs.cjs KIND USER_ID, with RXVOICE_BENCH_NODE_MODULES set to a
// node_modules holding @discordjs/voice 0.19 (and its DAVE dependency) and @discordjs/opus,
// and the sandbox's JSON line on the first line of stdin. Kinds:
//   frames: receiver.subscribe(user) for every speaker, counting the Opus packets;
//   mix:    the same, each packet decoded with @discordjs/opus (native libopus, the Opus
//           library discord.js recommends; opusscript 0.1.1 corrupts its heap as soon as
//           four decoders exist) and summed into a 20 ms mix;
//   send:   prepareAudioPacket + dispatchAudio in bursts, then an AudioPlayer (paced).
// It speaks the same line protocol as e2e_client.py: {"ready": ...} once joined, then one
// JSON answer per command (heard, mark, latency-on, latency-off, send, quit).
// The voice credentials come from the sandbox's JSON line: the gateway adapter answers
// discord.js's op 4 with them, as a main-gateway shard would.
'use strict';

const path = require('node:path');
const readline = require('node:readline');
const { Readable } = require('node:stream');

const modules = process.env.RXVOICE_BENCH_NODE_MODULES;
const voice = require(path.join(modules, '@discordjs/voice'));
const { OpusEncoder } = require(path.join(modules, '@discordjs/opus'));

const [kind, userId] = process.argv.slice(2);
const SAMPLES_PER_FRAME = 960;
const CHANNELS = 2;
const OPUS_PAYLOAD_TYPE = 120;

const cpuSeconds = () => {
  const usage = process.cpuUsage(); // the whole process, all threads
  return (usage.user + usage.system) / 1e6;
};
const reply = (message) => process.stdout.write(`${JSON.stringify(message)}\n`);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function join(info) {
  const guildId = info.guild_id;
  const channelId = info.channel_id;
  return voice.joinVoiceChannel({
    guildId,
    channelId,
    selfDeaf: false,
    selfMute: false,
    daveEncryption: true,
    adapterCreator: (methods) => ({
      sendPayload(payload) {
        if (payload.d.channel_id) {
          setImmediate(() => {
            methods.onVoiceStateUpdate({
              guild_id: guildId,
              channel_id: channelId,
              user_id: userId,
              session_id: `bench${userId}`,
              deaf: false,
              mute: false,
              self_deaf: false,
              self_mute: false,
              self_video: false,
              suppress: false,
              request_to_speak_timestamp: null,
            });
            methods.onVoiceServerUpdate({
              guild_id: guildId,
              token: info.voice.token,
              endpoint: info.voice.endpoint,
            });
          });
        }
        return true;
      },
      destroy() {},
    }),
  });
}

function receiver(connection) {
  const client = { frames: 0, heard: new Set(), samples: null };
  const mix = kind === 'mix' ? new Int32Array(SAMPLES_PER_FRAME * CHANNELS) : null;
  let wanted = new Set();
  let allHeard = () => {};
  const listen = (user) => {
    const decoder = mix ? new OpusEncoder(48000, CHANNELS) : null;
    connection.receiver.subscribe(user).on('data', (packet) => {
      client.frames++;
      // Until its DAVE session is ready, discord.js passes DAVE frames on still
      // encrypted (they end in FA FA): not Opus.
      const encrypted = packet[packet.length - 1] === 0xfa && packet[packet.length - 2] === 0xfa;
      if (decoder && !encrypted) {
        const pcm = decoder.decode(packet);
        const samples = new Int16Array(pcm.buffer, pcm.byteOffset, pcm.length >> 1);
        for (let i = 0; i < samples.length; i++) mix[i] += samples[i];
      }
      if (!client.heard.has(user) && !encrypted) {
        client.heard.add(user);
        if ([...wanted].every((u) => client.heard.has(u))) allHeard();
      }
    });
  };
  // A receive stream per speaker, as a bot listening to everyone subscribes.
  client.expect = (users) =>
    new Promise((resolve) => {
      wanted = new Set(users);
      allHeard = resolve;
      for (const user of users) listen(user);
      if (users.every((u) => client.heard.has(u))) resolve();
    });
  if (mix) {
    // Every 20 ms: clip the sum into int16 PCM (the mixed audio) and start afresh.
    const out = new Int16Array(mix.length);
    setInterval(() => {
      for (let i = 0; i < mix.length; i++) {
        out[i] = Math.max(-32768, Math.min(32767, mix[i]));
      }
      mix.fill(0);
    }, 20);
  }
  // Latency: a 'message' listener added after the receiver's runs right after the
  // packet was pushed to its stream (a flowing stream emits 'data' synchronously).
  const record = (msg) => {
    if (msg.length > 12 && (msg[1] & 0x7f) === OPUS_PAYLOAD_TYPE) {
      client.samples.push([msg.readUInt32BE(8), msg.readUInt16BE(2), Number(process.hrtime.bigint())]);
    }
  };
  client.latency = (on) => {
    const udp = connection.state.networking.state.udp;
    const samples = client.samples || [];
    udp.off('message', record);
    client.samples = on ? [] : null;
    if (on) udp.on('message', record);
    return samples;
  };
  return client;
}

function toneFrames(count) {
  const encoder = new OpusEncoder(48000, CHANNELS);
  const frames = [];
  for (let f = 0; f < count; f++) {
    const pcm = new Int16Array(SAMPLES_PER_FRAME * CHANNELS);
    for (let i = 0; i < SAMPLES_PER_FRAME; i++) {
      const t = (f * SAMPLES_PER_FRAME + i) / 48000;
      pcm[2 * i] = pcm[2 * i + 1] = Math.round(0.3 * 32767 * Math.sin(2 * Math.PI * 440 * t));
    }
    frames.push(encoder.encode(Buffer.from(pcm.buffer)));
  }
  return frames;
}

function sender(connection) {
  const opus = toneFrames(50);
  return {
    frames: 0,
    async send(cmd) {
      const burst = [];
      connection.setSpeaking(true);
      for (let r = 0; r < cmd.repeat; r++) {
        const start = cpuSeconds();
        for (let i = 0; i < cmd.burst; i++) {
          connection.prepareAudioPacket(opus[i % opus.length]);
          connection.dispatchAudio();
        }
        burst.push(((cpuSeconds() - start) / cmd.burst) * 1e6);
        await sleep(100); // let the socket drain between bursts
      }
      connection.setSpeaking(false);
      const frames = Array.from({ length: cmd.paced }, (_, i) => opus[i % opus.length]);
      const player = voice.createAudioPlayer();
      connection.subscribe(player);
      const resource = voice.createAudioResource(Readable.from(frames), {
        inputType: voice.StreamType.Opus,
      });
      const start = cpuSeconds();
      player.play(resource);
      await voice.entersState(player, voice.AudioPlayerStatus.Playing, 5000);
      await voice.entersState(player, voice.AudioPlayerStatus.Idle, cmd.paced * 20 + 10000);
      // The player adds 5 silence frames after the resource ends.
      const paced = ((cpuSeconds() - start) / (cmd.paced + 5)) * 1e6;
      return { burst_us: burst, paced_us: paced };
    },
  };
}

async function main() {
  const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  const info = JSON.parse((await lines.next()).value);
  const connection = join(info);
  await voice.entersState(connection, voice.VoiceConnectionStatus.Ready, 60000);
  const client = kind === 'send' ? sender(connection) : receiver(connection);
  reply({ ready: kind });
  for await (const line of lines) {
    const cmd = JSON.parse(line);
    if (cmd.cmd === 'quit') break;
    if (cmd.cmd === 'heard') {
      await client.expect(cmd.speakers);
      reply({ heard: client.heard.size });
    } else if (cmd.cmd === 'mark') reply({ cpu: cpuSeconds(), frames: client.frames });
    else if (cmd.cmd === 'latency-on' || cmd.cmd === 'latency-off') {
      reply({ samples: client.latency(cmd.cmd === 'latency-on') });
    } else if (cmd.cmd === 'send') reply(await client.send(cmd));
  }
  connection.destroy();
  process.exit(0);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
