function err = record_epoch(M, args)
% Per-epoch hook of tagatune_mlp: keeps the weights after every epoch.
global DEEPBOF_EPOCHS
DEEPBOF_EPOCHS{end + 1} = struct('W', {M.W}, 'biases', {M.biases});
err = 0;
end
