function err = record_epoch_auc(M, args)
% Per-epoch hook of tagatune_mlp (replaces deepmat's save_intermediate, which writes
% the whole network to a file every epoch).
err = 0;
end
